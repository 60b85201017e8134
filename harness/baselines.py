"""Stored baselines, tolerances and noise-aware verdicts.

A baseline file ``baselines/<suite>/<device-class>.json`` holds, per (model, spec,
profile), the value of every metric with its direction, tolerance and measured spread.
Numbers are only ever compared with a baseline of the *same* device class; a file for
another class yields the verdict ``incomparable-device``, never a silent comparison.

Verdicts (per metric): ``pass`` (within tolerance or within noise), ``regressed``,
``improved``, ``new`` (measured, no baseline entry), ``missing`` (baseline entry, not
measured by a test that ran), ``incomparable-device``.

Noise: when a figure carries a p10–p90 spread (latency), a change whose measured
p10–p90 interval overlaps the baseline's is *not* a regression (nor an improvement),
whatever the tolerance says: it is inside the noise of the measurement.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.paths import atomic_write, inside, safe_component  # noqa: F401  (atomic_write: old import path)
from harness.records import METRICS, Record

SCHEMA = "harness-baseline/1"
VERDICTS = ("regressed", "missing", "incomparable-device", "new", "improved", "pass")
DEFAULT_TOLERANCES = {  # metric prefix -> tolerance text (longest prefix wins)
    "size.": "1%", "ppl.": "2%", "fidelity.kl": "0.01", "fidelity.top1": "0.01",
    "fidelity.cosine": "0.005", "latency.": "25%", "latency.speedup": "50%", "memory.": "25%", "energy.": "15%",
    "compress.wall_s": "200%", "compress.peak_rss_mb": "64", "": "10%",
}


class BaselineError(ValueError):
    """A corrupt, hand-broken or unusable baseline file (one-line message)."""


@dataclass(frozen=True)
class Tolerance:
    """Allowed change in the worse direction: relative (fraction of baseline) or absolute."""

    value: float
    relative: bool

    def allowed(self, baseline: float) -> float:
        return abs(baseline) * self.value if self.relative else self.value

    def __str__(self) -> str:
        return f"{self.value * 100:g}%" if self.relative else f"{self.value:g}"


def parse_tolerance(text: Any) -> Tolerance:
    """``"2%"`` -> relative 0.02; ``"0.01"`` -> absolute 0.01."""
    s = str(text).strip()
    rel = s.endswith("%")
    try:
        v = float(s[:-1] if rel else s)
    except ValueError:
        raise ValueError(f"tolerance {text!r} is not a number or percentage (e.g. '2%' or '0.01')") from None
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"tolerance {text!r} must be a finite number >= 0")
    return Tolerance(v / 100 if rel else v, rel)


def parse_fail_on(text: str) -> tuple[str, Tolerance]:
    """``"ppl.window:2%"`` -> ("ppl.window", 2% relative). Unknown metric -> ValueError."""
    metric, sep, tol = str(text).rpartition(":")
    if not sep or not metric.strip() or not tol.strip():
        raise ValueError(f"--harness-fail-on {text!r}: expected METRIC:TOL, e.g. ppl.window:2% "
                         f"or fidelity.kl:0.01")
    metric = metric.strip()
    if metric not in METRICS:
        raise ValueError(f"--harness-fail-on {text!r}: {METRICS.unknown_message(metric)}")
    try:
        return metric, parse_tolerance(tol)
    except ValueError as e:
        raise ValueError(f"--harness-fail-on {text!r}: {e}") from None


def default_tolerance(metric: str) -> Tolerance:
    key = max((k for k in DEFAULT_TOLERANCES if metric.startswith(k)), key=len)
    return parse_tolerance(DEFAULT_TOLERANCES[key])


def profile_of(rec: Record) -> str:
    return str(rec.extra.get("profile", "full"))


def entry_key(rec: Record) -> tuple[str, str, str]:
    return (rec.model, rec.spec, profile_of(rec))


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

    def to_json(self) -> dict[str, Any]:
        d = {"value": _round(self.value), "direction": "higher" if self.higher_is_better else "lower",
             "tolerance": str(self.tolerance), "unit": self.unit, "n": self.n}
        band = {k: _round(self.spread[k]) for k in ("p10", "p90") if k in self.spread}
        if band:
            d["spread"] = band
        return d


@dataclass
class Entry:
    model: str
    spec: str
    profile: str
    technique: str = ""
    test_id: str = ""
    metrics: dict[str, MetricBaseline] = field(default_factory=dict)


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
    return MetricBaseline(_num(d["value"], f"{where}.value"), d["direction"] == "higher", tol, spread,
                          str(d.get("unit", "")), n)


def parse_baseline(data: Any, where: str) -> BaselineFile:
    """Validate a decoded baseline JSON object; every problem is a one-line BaselineError."""
    if not isinstance(data, dict):
        raise BaselineError(f"{where}: top level must be a JSON object")
    if data.get("schema") != SCHEMA:
        raise BaselineError(f"{where}: schema {data.get('schema')!r} is not {SCHEMA!r}")
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
        for name, md in metrics.items():
            if name not in METRICS:
                raise BaselineError(f"{w}.metrics: {METRICS.unknown_message(name)}")
            ent.metrics[name] = _parse_metric(md, f"{w}.metrics[{name!r}]")
        key = (ent.model, ent.spec, ent.profile)
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


class BaselineStore:
    """Baselines under one directory, loaded lazily and cached per (suite, device class)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._cache: dict[tuple[str, str], BaselineFile | None] = {}

    def get(self, suite: str, device_class: str) -> BaselineFile | None:
        key = (suite, device_class)
        if key not in self._cache:
            p = baseline_path(self.root, suite, device_class)
            self._cache[key] = load_baseline(p) if p.is_file() else None
        return self._cache[key]

    def other_classes(self, suite: str, device_class: str) -> list[str]:
        d = inside(self.root, safe_component(suite, "suite"))
        return sorted(p.stem for p in d.glob("*.json") if p.stem != device_class) if d.is_dir() else []


@dataclass
class Verdict:
    status: str
    metric: str
    model: str
    spec: str
    profile: str = "full"
    test_id: str = ""
    baseline: float | None = None
    measured: float | None = None
    tolerance: Tolerance | None = None
    note: str = ""

    def line(self) -> str:
        """One line naming metric, baseline, measured value and tolerance."""
        what = f"{self.model} {self.spec}"
        if self.baseline is None or self.measured is None:
            return f"{self.metric} {self.status} ({what}): {self.note}"
        pct = f" ({(self.measured / self.baseline - 1) * 100:+.1f}%)" if self.baseline else ""
        return (f"{self.metric} {self.status}: baseline {self.baseline:.6g}, measured {self.measured:.6g}"
                f"{pct}, tolerance {self.tolerance} ({what}){'; ' + self.note if self.note else ''}")


def _band(value: float, spread: dict[str, float]) -> tuple[float, float]:
    return (spread.get("p10", value), spread.get("p90", value))


def compare(rec: Record, base: MetricBaseline, tolerance: Tolerance | None = None) -> Verdict:
    """Verdict of one measured record against its baseline value (noise-aware)."""
    tol = tolerance or base.tolerance
    v = Verdict("pass", rec.metric, rec.model, rec.spec, profile_of(rec), rec.test_id, base.value,
                rec.value, tol)
    if rec.value is None:
        v.status, v.note = "missing", f"not measured: {rec.reason or rec.status}"
        return v
    worse = (base.value - rec.value) if base.higher_is_better else (rec.value - base.value)
    allowed = tol.allowed(base.value)
    if abs(worse) <= allowed:
        return v
    lo_b, hi_b = _band(base.value, base.spread)
    lo_m, hi_m = _band(rec.value, rec.spread or {})
    if (base.spread or rec.spread) and lo_m <= hi_b and lo_b <= hi_m:
        v.note = (f"within noise: measured p10-p90 [{lo_m:.4g}, {hi_m:.4g}] overlaps baseline "
                  f"[{lo_b:.4g}, {hi_b:.4g}]")
        return v
    v.status = "regressed" if worse > 0 else "improved"
    return v


def verdicts(records: Iterable[Record], store: BaselineStore | None, device_class: str, *,
             overrides: dict[str, Tolerance] | None = None, missing: bool = True) -> list[Verdict]:
    """Verdicts for every ok record, plus ``missing`` for metrics of a baseline entry that
    these records measured only in part (a test that stopped measuring something).
    Records of another device class than ``device_class`` are skipped."""
    overrides = overrides or {}
    out: list[Verdict] = []
    seen: dict[tuple[str, str, str, str], set[str]] = {}
    for r in records:
        if r.device_class and r.device_class != device_class:
            continue
        seen.setdefault((r.suite, *entry_key(r)), set()).add(r.metric)
        if r.status != "ok" or r.value is None:
            continue
        v = Verdict("new", r.metric, r.model, r.spec, profile_of(r), r.test_id, None, r.value)
        bf = store.get(r.suite, device_class) if store else None
        if bf is None:
            others = store.other_classes(r.suite, device_class) if store else []
            if others:
                v.status = "incomparable-device"
                v.note = (f"baselines exist only for {', '.join(others)}; this device is {device_class} "
                          f"(not compared)")
            else:
                v.note = f"no baseline file for suite {r.suite!r} on {device_class}"
        else:
            ent = bf.entries.get(entry_key(r))
            base = ent.metrics.get(r.metric) if ent else None
            if base is None:
                v.note = f"no baseline entry in {bf.path or bf.suite}"
            else:
                v = compare(r, base, overrides.get(r.metric))
        out.append(v)
    if store and missing:
        for (suite, model, spec, profile), measured in seen.items():
            bf = store.get(suite, device_class)
            ent = bf.entries.get((model, spec, profile)) if bf else None
            if not ent:
                continue
            for m in sorted(set(ent.metrics) - measured):
                out.append(Verdict("missing", m, model, spec, profile, ent.test_id,
                                   ent.metrics[m].value, None, ent.metrics[m].tolerance,
                                   "in the baseline but not measured by this run"))
    return out


def worst(statuses: Iterable[str]) -> str:
    """The most severe verdict of a group (order of ``VERDICTS``)."""
    s = set(statuses)
    return next((v for v in VERDICTS if v in s), "")


def update(records: Iterable[Record], root: str | Path, *, prune: bool = False,
           run_id: str = "") -> list[tuple[Path, int, int]]:
    """Write/merge baseline files from a run's ok records; keeps hand-set tolerances.

    Returns (path, entries written from the run, entries kept from before) per file."""
    groups: dict[tuple[str, str], dict[tuple[str, str, str], Entry]] = {}
    for r in records:
        if r.status != "ok" or r.value is None or not r.suite or not r.device_class:
            continue
        ents = groups.setdefault((r.suite, r.device_class), {})
        ent = ents.setdefault(entry_key(r), Entry(r.model, r.spec, profile_of(r), r.technique, r.test_id))
        ent.metrics[r.metric] = MetricBaseline(r.value, bool(r.higher_is_better), default_tolerance(r.metric),
                                               {k: float(v) for k, v in (r.spread or {}).items()
                                                if k in ("p10", "p90")}, r.unit, r.n)
    paths = {key: baseline_path(root, *key) for key in groups}  # every name checked before any write
    olds = {key: load_baseline(p) if p.is_file() else BaselineFile(*key) for key, p in paths.items()}
    written = []
    for (suite, dc), ents in sorted(groups.items()):
        path, old = paths[(suite, dc)], olds[(suite, dc)]
        kept = 0
        for key, ent in ents.items():
            prev = old.entries.get(key)
            for m, mb in ent.metrics.items():
                if prev and m in prev.metrics:
                    mb.tolerance = prev.metrics[m].tolerance  # hand-tuned tolerances survive
        merged = {} if prune else {k: e for k, e in old.entries.items() if k not in ents}
        kept = len(merged)
        merged.update(ents)
        data = {"schema": SCHEMA, "suite": suite, "device_class": dc,
                "source": {"run_id": run_id, "note": "written by `harness baseline update`; review with git diff"},
                "entries": [{"model": e.model, "spec": e.spec, "profile": e.profile, "technique": e.technique,
                             "test_id": e.test_id,
                             "metrics": {m: e.metrics[m].to_json() for m in sorted(e.metrics)}}
                            for _, e in sorted(merged.items())]}
        atomic_write(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
        written.append((path, len(ents), kept))
    return written
