"""The baseline store: files under one root, the keys records are matched by, repeated runs
combined into one, and ``update`` / ``migrate``.

A baseline file ``baselines/<suite>/<device-class>.json`` (schema and migration:
``harness.baselines.file``) holds, per (model, resolved config, profile), the value of every
metric with its direction, tolerance and measured spread. How a run is judged against it:
``harness.baselines.verdicts``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness.baselines.file import (
    SCHEMA_V1,
    BaselineFile,
    Entry,
    MetricBaseline,
    Tolerance,
    baseline_path,
    baseline_samples,
    dump,
    load_baseline,
    parse_tolerance,
    resolve_spec,
)
from harness.config import resolved_key
from harness.metrics import METRICS
from harness.paths import atomic_write, inside, safe_component
from harness.records import Record


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
    """The record's full resolved config + config version (``harness.config.resolved_key``)."""
    if rec.config and rec.technique:
        from harness.techniques.base import TECHNIQUES

        version = TECHNIQUES.get(rec.technique).config_version if rec.technique in TECHNIQUES else 1
        return resolved_key(rec.technique, rec.config, version)
    return resolve_spec(rec.spec)


def baseline_key(rec: Record) -> tuple[str, str, str]:
    """(model, resolved config, profile): what a baseline entry is matched by."""
    return (rec.model, resolved_of(rec), profile_of(rec))


class BaselineStore:
    """Baselines under one directory, loaded lazily and cached per (suite, device class)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._cache: dict[tuple[str, str], BaselineFile | None] = {}
        self._memory = False

    @classmethod
    def of(cls, records: Iterable[Record], *, fingerprint: dict[str, Any] | None = None) -> BaselineStore:
        """A store held in memory, made from records (another run standing in for the
        baseline: ``harness compare A B``), with that run's fingerprint."""
        store = cls("<records>")
        store._memory = True
        for (suite, dc), ents in baseline_entries(records).items():
            source = {"fingerprint": fingerprint} if fingerprint else {}
            store._cache[(suite, dc)] = BaselineFile(suite, dc, ents, source)
        return store

    def get(self, suite: str, device_class: str) -> BaselineFile | None:
        key = (suite, device_class)
        if key not in self._cache and not self._memory:
            p = baseline_path(self.root, suite, device_class)
            self._cache[key] = load_baseline(p) if p.is_file() else None
        return self._cache.get(key)

    def other_classes(self, suite: str, device_class: str) -> list[str]:
        if self._memory:
            return sorted(dc for s, dc in self._cache if s == suite and dc != device_class)
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
    noise by the number of runs (``harness.baselines.judge.compare``). Other records pass unchanged."""
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


def baseline_entries(records: Iterable[Record]) -> dict[tuple[str, str], dict[tuple[str, str, str], Entry]]:
    """(suite, device class) -> baseline entries made from these ok records (several runs: the
    median run's value and samples, with every run's value), with the registered tolerances."""
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
    return groups


def update(records: Iterable[Record], root: str | Path, *, prune: bool = False,
           run_id: str = "", fingerprint: dict[str, Any] | None = None) -> list[tuple[Path, int, int]]:
    """Write/merge baseline files from a run's ok records; keeps hand-set tolerances.

    Records of several runs (several ``run_id``) make one baseline: each metric takes the
    value and samples of its median run and keeps every run's value (``runs``), from which
    verdicts learn the run-to-run noise (``harness.baselines.judge.run_noise``).

    Returns (path, entries written from the run, entries kept from before) per file."""
    groups = baseline_entries(records)
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
