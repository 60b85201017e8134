"""Baseline files: ``baselines/<suite>/<device-class>.json``, their schema, validation and
migration. ``harness.baselines.verdicts`` judges records against what these files hold.

Schema ``harness-baseline/2``: each entry is keyed by (model, resolved config, profile). The
resolved config is the technique's full configuration, defaults included, plus its
``config_version`` (``rtn:bits=4,group=128,sym=true@v1``), so a changed default or a
changed meaning never compares against numbers measured under the old one. Schema 1 keyed
entries by the short spec string; a schema-1 file still loads through a one-step
migration (each spec resolved with today's defaults, entries marked ``migrated``), and
``harness baseline migrate`` rewrites the files.
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import config_to_dict, normalize_key, resolved_key
from harness.metrics import METRICS
from harness.paths import inside, safe_component

SCHEMA = "harness-baseline/2"
SCHEMA_V1 = "harness-baseline/1"


class BaselineError(ValueError):
    """A corrupt, hand-broken or unusable baseline file (one-line message)."""


@dataclass(frozen=True)
class Tolerance:
    """Allowed change in the worse direction: relative (fraction of baseline) or absolute,
    or both summed (``"25%+8"``: a quarter of the baseline plus 8 units, for figures such as
    a step's memory that can be near zero, where a fraction alone would allow nothing)."""

    value: float
    relative: bool
    absolute: float = 0.0  # added to a relative tolerance

    def allowed(self, baseline: float) -> float:
        return (abs(baseline) * self.value + self.absolute) if self.relative else self.value

    def __str__(self) -> str:
        if not self.relative:
            return f"{self.value:g}"
        return f"{self.value * 100:g}%" + (f"+{self.absolute:g}" if self.absolute else "")


def parse_tolerance(text: Any) -> Tolerance:
    """``"2%"`` -> relative 0.02; ``"0.01"`` -> absolute 0.01; ``"25%+8"`` -> both."""
    s = str(text).strip()
    rel_part, plus, abs_part = s.partition("%+") if "%+" in s else (s, "", "")
    try:
        extra = float(abs_part) if plus else 0.0
    except ValueError:
        raise ValueError(f"tolerance {text!r}: {abs_part!r} after '%+' is not a number (e.g. '25%+8')") from None
    rel = bool(plus) or rel_part.endswith("%")
    try:
        v = float(rel_part[:-1] if rel and not plus else rel_part)
    except ValueError:
        raise ValueError(f"tolerance {text!r} is not a number or percentage (e.g. '2%' or '0.01')") from None
    if not math.isfinite(v) or v < 0 or not math.isfinite(extra) or extra < 0:
        raise ValueError(f"tolerance {text!r} must be a finite number >= 0")
    return Tolerance(v / 100 if rel else v, rel, extra)


def _round(v: float) -> float:
    """7 significant digits: far below any tolerance, and reviewable diffs."""
    return float(f"{v:.7g}")


@dataclass
class MetricBaseline:
    value: float
    higher_is_better: bool
    tolerance: Tolerance
    spread: dict[str, float] = field(default_factory=dict)
    unit: str = ""
    n: int = 1
    # Raw samples the statistical verdicts use (``harness.baselines.judge``); empty = spread-only.
    samples: dict[str, list[float]] = field(default_factory=dict)
    # The value of each run the baseline was written from (``harness baseline update RUN1 RUN2
    # ...``): the run-to-run noise, which one run's samples cannot show (``harness.baselines.judge``).
    runs: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = {"value": _round(self.value), "direction": "higher" if self.higher_is_better else "lower",
             "tolerance": str(self.tolerance), "unit": self.unit, "n": self.n}
        band = {k: _round(self.spread[k]) for k in ("p10", "p90") if k in self.spread}
        if band:
            d["spread"] = band
        if self.samples:
            d["samples"] = {k: self.samples[k] for k in sorted(self.samples)}
        if len(self.runs) >= 2:
            d["runs"] = [_round(x) for x in self.runs]
        return d


# What verdicts test on (``reference_values``: the reference timed beside a latency test).
SAMPLE_KEYS = ("values", "reference_values", "window_nll", "window_ids", "agree_bits", "tokens")


def baseline_samples(samples: dict[str, Any] | None) -> dict[str, list[float]]:
    """The part of a record's raw samples a baseline keeps (what ``harness.baselines.judge`` tests)."""
    return {k: list(v) for k, v in (samples or {}).items() if k in SAMPLE_KEYS and v}


@dataclass
class Entry:
    model: str
    spec: str
    profile: str
    technique: str = ""
    test_id: str = ""
    metrics: dict[str, MetricBaseline] = field(default_factory=dict)
    resolved: str = ""  # full config + version (the key); computed from ``spec`` for schema-1 entries
    migrated: bool = False

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.model, self.resolved, self.profile)


@dataclass
class BaselineFile:
    suite: str
    device_class: str
    entries: dict[tuple[str, str, str], Entry] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def _num(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise BaselineError(f"{where}: {v!r} is not a finite number")
    return float(v)


def _parse_metric(d: Any, where: str) -> MetricBaseline:
    if not isinstance(d, dict):
        raise BaselineError(f"{where}: expected an object with value/direction/tolerance")
    for k in ("value", "direction", "tolerance"):
        if k not in d:
            raise BaselineError(f"{where}: missing {k!r}")
    if d["direction"] not in ("higher", "lower"):
        raise BaselineError(f"{where}.direction: {d['direction']!r} is not 'higher' or 'lower'")
    try:
        tol = parse_tolerance(d["tolerance"])
    except ValueError as e:
        raise BaselineError(f"{where}.tolerance: {e}") from None
    spread = d.get("spread") or {}
    if not isinstance(spread, dict):
        raise BaselineError(f"{where}.spread: expected an object like {{'p10': .., 'p90': ..}}")
    spread = {k: _num(v, f"{where}.spread.{k}") for k, v in spread.items()}
    if "p10" in spread and "p90" in spread and spread["p10"] > spread["p90"]:
        raise BaselineError(f"{where}.spread: p10 {spread['p10']:g} > p90 {spread['p90']:g}")
    n = d.get("n", 1)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise BaselineError(f"{where}.n: {n!r} is not a positive integer")
    samples = d.get("samples") or {}
    if not isinstance(samples, dict) or not all(
            isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
            for v in samples.values()):
        raise BaselineError(f"{where}.samples: expected an object of number lists, e.g. {{'values': [1.0, 1.1]}}")
    runs = d.get("runs") or []
    if not isinstance(runs, list) or len(runs) == 1:
        raise BaselineError(f"{where}.runs: expected a list of at least 2 per-run values, e.g. [1.0, 1.1]")
    runs = [_num(x, f"{where}.runs") for x in runs]
    return MetricBaseline(_num(d["value"], f"{where}.value"), d["direction"] == "higher", tol, spread,
                          str(d.get("unit", "")), n, {k: list(v) for k, v in samples.items()}, runs)


def parse_baseline(data: Any, where: str) -> BaselineFile:
    """Validate a decoded baseline JSON object; every problem is a one-line BaselineError."""
    if not isinstance(data, dict):
        raise BaselineError(f"{where}: top level must be a JSON object")
    if data.get("schema") not in (SCHEMA, SCHEMA_V1):
        raise BaselineError(f"{where}: schema {data.get('schema')!r} is not {SCHEMA!r} (or {SCHEMA_V1!r}, "
                            f"migrated on load)")
    v1 = data["schema"] == SCHEMA_V1
    for k in ("suite", "device_class"):
        if not isinstance(data.get(k), str) or not data[k]:
            raise BaselineError(f"{where}: {k!r} must be a non-empty string")
    entries = data.get("entries")
    if not isinstance(entries, list):
        raise BaselineError(f"{where}: 'entries' must be a list")
    out = BaselineFile(data["suite"], data["device_class"], source=data.get("source") or {})
    for i, e in enumerate(entries):
        w = f"{where}: entries[{i}]"
        if not isinstance(e, dict) or not all(isinstance(e.get(k), str) for k in ("model", "spec")):
            raise BaselineError(f"{w}: needs string 'model' and 'spec'")
        metrics = e.get("metrics")
        if not isinstance(metrics, dict):
            raise BaselineError(f"{w}: 'metrics' must be an object")
        ent = Entry(e["model"], e["spec"], str(e.get("profile", "full")), str(e.get("technique", "")),
                    str(e.get("test_id", "")))
        resolved = None if v1 else e.get("resolved")
        if resolved is not None and not isinstance(resolved, str):
            raise BaselineError(f"{w}.resolved: expected a string like 'rtn:bits=4,group=128,sym=true@v1'")
        ent.resolved = normalize_key(resolved) if resolved else resolve_spec(ent.spec)
        ent.migrated = v1 or bool(e.get("migrated")) or resolved is None
        for name, md in metrics.items():
            if name not in METRICS:
                raise BaselineError(f"{w}.metrics: {METRICS.unknown_message(name)}")
            ent.metrics[name] = _parse_metric(md, f"{w}.metrics[{name!r}]")
        key = ent.key
        if key in out.entries:
            raise BaselineError(f"{w}: duplicate entry for {' '.join(key)}")
        out.entries[key] = ent
    return out


def baseline_path(root: str | Path, suite: str, device_class: str) -> Path:
    """``root/<suite>/<device_class>.json``; both names come from records, so each must be a
    plain file name and the result must stay inside ``root``."""
    return inside(root, safe_component(suite, "suite"), safe_component(device_class, "device class") + ".json")


def load_baseline(path: str | Path) -> BaselineFile:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise BaselineError(f"{path}: not valid JSON (line {e.lineno} col {e.colno}: {e.msg})") from None
    except OSError as e:
        raise BaselineError(f"{path}: cannot read ({e.strerror})") from None
    bf = parse_baseline(data, str(path))
    if bf.device_class != path.stem:
        raise BaselineError(f"{path}: device_class {bf.device_class!r} does not match the file name "
                            f"{path.stem!r}")
    bf.path = path
    return bf


@functools.lru_cache(maxsize=512)
def resolve_spec(spec: str) -> str:
    """A spec string as its full resolved config with today's defaults and config version
    (the schema-1 migration, and records that carry no config). A spec that no installed
    technique parses stays as written."""
    try:
        from harness.techniques.spec import make

        t = make(spec)
    except Exception:  # noqa: BLE001 - a foreign or retired technique: keep the text
        return spec
    return resolved_key(t.name, config_to_dict(t.config), t.config_version)


def dump(bf: BaselineFile, run_id: str = "") -> str:
    """The schema-2 JSON text of ``bf`` (sorted entries, reviewable diffs)."""
    data = {"schema": SCHEMA, "suite": bf.suite, "device_class": bf.device_class,
            "source": {**bf.source, **({"run_id": run_id} if run_id else {}),
                       "note": "written by `harness baseline update`; review with git diff"},
            "entries": [{"model": e.model, "spec": e.spec, "resolved": e.resolved, "profile": e.profile,
                         "technique": e.technique, "test_id": e.test_id, **({"migrated": True} if e.migrated else {}),
                         "metrics": {m: e.metrics[m].to_json() for m in sorted(e.metrics)}}
                        for _, e in sorted(bf.entries.items())]}
    return json.dumps(data, indent=2, sort_keys=False) + "\n"
