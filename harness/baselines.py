"""Noise-aware verdicts of records against stored baselines, and ``update``.

A baseline file ``baselines/<suite>/<device-class>.json`` (schema and migration:
``harness.baseline_file``) holds, per (model, resolved config, profile), the value of every
metric with its direction, tolerance and measured spread.
Numbers are only ever compared with a baseline of the *same* device class; a file for
another class, or a file whose fingerprint differs in a field that moves performance,
yields ``not-comparable``, never a silent comparison.

Verdicts (per metric): ``improved``, ``pass``, ``regressed``, ``inconclusive`` (not
decided by these samples; the note says how many would decide; ``harness.stats.decide``),
``not-comparable``, plus ``new`` (measured, no baseline entry) and ``missing`` (baseline
entry, not measured by a test that ran). How each metric is tested: ``harness.judge``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness.baseline_file import (  # noqa: F401  (re-exported: the names callers know baselines by)
    SCHEMA,
    SCHEMA_V1,
    BaselineError,
    BaselineFile,
    Entry,
    MetricBaseline,
    Tolerance,
    baseline_path,
    baseline_samples,
    dump,
    load_baseline,
    parse_baseline,
    parse_tolerance,
    resolve_spec,
    resolved_key,
)
from harness.judge import (  # noqa: F401  (re-exported)
    RAW_OF,
    Verdict,
    compare,
    fingerprint_diff,
    hold_if_host_moved,
    is_performance,
    pooled_log_var,
    run_noise,
)
from harness.metrics import METRICS
from harness.paths import atomic_write, inside, safe_component
from harness.records import Record

VERDICTS = ("regressed", "missing", "not-comparable", "inconclusive", "new", "improved", "pass")
# Raw timings: they move with the host. Speed-ups (derived against the run's own reference) do not.
RAW_LATENCY = tuple(m.name for m in METRICS.ordered() if m.name.startswith("latency.") and not m.derive)
# Other wall-clock figures that move with the host: not judged while the reference's timings moved.
HOST_TIMED = ("compress.wall_s", "train.wall_s")


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
    """The metric's registered tolerance (``harness.metrics``)."""
    return parse_tolerance(METRICS.get(metric).tolerance)


def profile_of(rec: Record) -> str:
    return str(rec.extra.get("profile", "full"))


def entry_key(rec: Record) -> tuple[str, str, str]:
    """(model, spec, profile): how reports group a run's records."""
    return (rec.model, rec.spec, profile_of(rec))


def resolved_of(rec: Record) -> str:
    """The record's full resolved config + config version (``harness.baseline_file``)."""
    if rec.config and rec.technique:
        from harness.techniques.base import TECHNIQUES

        cls = TECHNIQUES.get(rec.technique) if rec.technique in TECHNIQUES else None
        return resolved_key(rec.technique, rec.config, int(getattr(cls, "config_version", 1)))
    return resolve_spec(rec.spec)


def baseline_key(rec: Record) -> tuple[str, str, str]:
    """(model, resolved config, profile): what a baseline entry is matched by."""
    return (rec.model, resolved_of(rec), profile_of(rec))


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


def median_run(runs: list[Record]) -> Record:
    """The record of the median run by value (the lower of the two middle ones): its samples
    stay whole, which a median of pooled samples would not."""
    return sorted(runs, key=lambda x: x.value)[(len(runs) - 1) // 2]


def combine_runs(records: Iterable[Record]) -> list[Record]:
    """Records of repeated runs of one suite (several ``run_id``: ``harness run --repeat``,
    or ``harness merge`` of runs on one host) as one record per metric of a test: the median
    run's, with every run's value in ``extra["runs"]``, so a verdict divides the run-to-run
    noise by the number of runs (``harness.judge.compare``). Other records pass unchanged."""
    def group(r: Record) -> tuple | None:
        ok = r.status == "ok" and r.value is not None and r.suite
        return (r.suite, r.device_class, *baseline_key(r), r.metric) if ok else None

    records = list(records)
    groups: dict[tuple, dict[str, Record]] = {}
    for r in records:
        if (g := group(r)) is not None:
            groups.setdefault(g, {})[r.run_id] = r
    out: list[Record] = []
    done: set[tuple] = set()
    for r in records:
        g = group(r)
        runs = groups[g] if g is not None else {}
        if len(runs) < 2:
            out.append(r)
        elif g not in done:
            done.add(g)
            m = median_run(list(runs.values()))
            out.append(dataclasses.replace(m, extra={**m.extra, "runs": [float(x.value) for x in runs.values()],
                                                     "run_ids": list(runs)}))
    return out


def verdicts(records: Iterable[Record], store: BaselineStore | None, device_class: str, *,
             overrides: dict[str, Tolerance] | None = None, missing: bool = True,
             reference_records: Iterable[Record] = (), fingerprint: dict[str, Any] | None = None) -> list[Verdict]:
    """Verdicts for every ok record, plus ``missing`` for metrics of a baseline entry that
    these records measured only in part (a test that stopped measuring something).
    Records of another device class than ``device_class`` are skipped.

    Comparability: when ``fingerprint`` (this run's) and the baseline file's differ in a
    field that moves performance (``harness.judge.COMPARABLE_FIELDS``), latency, memory and
    energy figures are ``not-comparable``, naming the fields; accuracy and sizes are judged.

    Host drift: when the uncompressed reference's own raw latency (in ``records`` or in
    ``reference_records``) is not shown consistent with its baseline (regressed, improved
    or inconclusive), raw latencies of that model and profile are ``inconclusive`` for this
    run, never regressed: the machine moved, and the speed-ups measured against the run's
    own, interleaved reference are the comparable figures."""
    records, reference_records = combine_runs(records), combine_runs(reference_records)
    out = _verdicts(records, store, device_class, overrides or {}, missing, fingerprint)
    extra = _verdicts(reference_records, store, device_class, overrides or {}, False, fingerprint)
    moved: dict[tuple[str, str, str], str] = {}
    for v in out + extra:
        if (v.spec == "none" and v.metric in RAW_LATENCY and v.status in ("regressed", "improved", "inconclusive")
                and v.baseline and v.measured is not None):
            moved[(v.model, v.profile, v.metric)] = f"{100 * (v.measured / v.baseline - 1):+.0f}%"
    for v in out:
        ref_metric = v.metric
        why = moved.get((v.model, v.profile, v.metric))
        if v.metric in HOST_TIMED:  # other wall times: the host moved if any reference timing did
            ref_metric, why = next(((m, w) for (mo, pr, m), w in moved.items()
                                    if (mo, pr) == (v.model, v.profile)), (v.metric, None))
        if why and v.status in ("regressed", "improved", "inconclusive"):
            was = v.status
            v.note = (f"host moved: the uncompressed reference's own {ref_metric} is {why} against its baseline "
                      f"and not shown consistent with it, so raw timings are not judged this run (the speed-ups "
                      f"are){'' if v.spec == 'none' else f'; alone it would have been {was}'}")
            v.status = "inconclusive"
    return out


def _verdicts(records: Iterable[Record], store: BaselineStore | None, device_class: str,
              overrides: dict[str, Tolerance], missing: bool, fingerprint: dict[str, Any] | None) -> list[Verdict]:
    out: list[Verdict] = []
    seen: dict[tuple[str, str, str, str], set[str]] = {}
    pooled: dict[tuple[int, str], tuple[float, float]] = {}
    keyed = [(r, baseline_key(r)) for r in records if not (r.device_class and r.device_class != device_class)]
    by_metric = {(r.suite, key, r.metric): r for r, key in keyed}
    for r, key in keyed:
        seen.setdefault((r.suite, *key), set()).add(r.metric)
        if r.status != "ok" or r.value is None:
            continue
        v = Verdict("new", r.metric, r.model, r.spec, profile_of(r), r.test_id, None, r.value)
        bf = store.get(r.suite, device_class) if store else None
        if bf is None:
            others = store.other_classes(r.suite, device_class) if store else []
            if others:
                v.status = "not-comparable"
                v.note = (f"baselines exist only for {', '.join(others)}; this device is {device_class} "
                          f"(not compared)")
            else:
                v.note = f"no baseline file for suite {r.suite!r} on {device_class}"
        else:
            ent = bf.entries.get(key)
            base = ent.metrics.get(r.metric) if ent else None
            diff = fingerprint_diff(fingerprint, bf.source.get("fingerprint")) if is_performance(r.metric) else []
            if base is None:
                v.note = f"no baseline entry in {bf.path or bf.suite}"
            elif diff:
                v = Verdict("not-comparable", r.metric, r.model, r.spec, profile_of(r), r.test_id, base.value,
                            r.value, base.tolerance, "fingerprints differ: " + "; ".join(diff))
            else:
                if (id(bf), r.metric) not in pooled:  # once per file and metric, not per record
                    pooled[(id(bf), r.metric)] = pooled_log_var(bf, r.metric)
                noise = run_noise(bf, r.metric, base, r.extra.get("runs"), pooled[(id(bf), r.metric)])
                v = compare(r, base, overrides.get(r.metric), noise)
                if r.metric in RAW_LATENCY or r.metric in RAW_OF:
                    raw = RAW_OF.get(r.metric, r.metric)
                    hold_if_host_moved(v, by_metric.get((r.suite, key, raw)), ent.metrics.get(raw))
        out.append(v)
    if store and missing:
        for (suite, model, resolved, profile), measured in seen.items():
            bf = store.get(suite, device_class)
            ent = bf.entries.get((model, resolved, profile)) if bf else None
            if not ent:
                continue
            for m in sorted(set(ent.metrics) - measured):
                out.append(Verdict("missing", m, model, ent.spec, profile, ent.test_id,
                                   ent.metrics[m].value, None, ent.metrics[m].tolerance,
                                   "in the baseline but not measured by this run"))
    return out


def worst(statuses: Iterable[str]) -> str:
    """The most severe verdict of a group (order of ``VERDICTS``)."""
    s = set(statuses)
    return next((v for v in VERDICTS if v in s), "")


def update(records: Iterable[Record], root: str | Path, *, prune: bool = False,
           run_id: str = "", fingerprint: dict[str, Any] | None = None) -> list[tuple[Path, int, int]]:
    """Write/merge baseline files from a run's ok records; keeps hand-set tolerances.

    Records of several runs (several ``run_id``) make one baseline: each metric takes the
    value and samples of its median run and keeps every run's value (``runs``), from which
    verdicts learn the run-to-run noise (``harness.judge.run_noise``).

    Returns (path, entries written from the run, entries kept from before) per file."""
    groups: dict[tuple[str, str], dict[tuple[str, str, str], Entry]] = {}
    for r in combine_runs(records):  # several runs: the median run, with every run's value
        if r.status != "ok" or r.value is None or not r.suite or not r.device_class:
            continue
        key = baseline_key(r)
        ent = groups.setdefault((r.suite, r.device_class), {}).setdefault(
            key, Entry(r.model, r.spec, profile_of(r), r.technique, r.test_id, resolved=key[1]))
        ent.metrics[r.metric] = MetricBaseline(
            r.value, bool(r.higher_is_better), default_tolerance(r.metric),
            {k: float(v) for k, v in (r.spread or {}).items() if k in ("p10", "p90")}, r.unit, r.n,
            baseline_samples(r.samples), list(r.extra.get("runs", [])))
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
        source = {**old.source, **({"fingerprint": fingerprint} if fingerprint else {})}
        atomic_write(path, dump(BaselineFile(suite, dc, merged, source), run_id))
        written.append((path, len(ents), kept))
    return written


def migrate(root: str | Path) -> list[tuple[Path, int]]:
    """Rewrite every schema-1 file under ``root`` as schema 2 (specs resolved with today's
    defaults, entries marked ``migrated``). Returns (path, entries) per rewritten file."""
    out = []
    for path in sorted(Path(root).glob("*/*.json")):
        data = load_baseline(path)
        raw = path.read_text(encoding="utf-8")
        if f'"{SCHEMA_V1}"' not in raw:
            continue
        atomic_write(path, dump(data, str(data.source.get("run_id", ""))))
        out.append((path, len(data.entries)))
    return out
