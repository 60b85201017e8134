"""A run's verdicts: every record judged against the stored baselines, by one function.

``judge_run`` turns a run's records into verdicts; ``gate`` turns verdicts into a job's
failures and warnings. The run controller calls ``judge_run`` once at session finish and
writes ``verdicts.jsonl`` into the run directory; the terminal summary, Markdown, HTML,
``harness report``, ``--repeat`` and ``harness baseline check`` read that file
(``run_verdicts``), and judge again with the same function only where a directory has
none, or where the baselines, tolerances or records changed since it was written. The
per-test fail-fast gate calls ``judge_run`` on one test's records, with the same reference.

Outcomes per metric: ``improved``, ``pass``, ``regressed``, ``inconclusive`` (not decided by
these samples; the note says how many would decide; ``harness.stats.decide``),
``not-comparable``, plus ``new`` (measured, no baseline entry) and ``missing`` (baseline
entry, not measured by a test that ran). How one metric is tested: ``harness.baselines.judge``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.baselines.file import BaselineError, Tolerance
from harness.baselines.judge import (
    RAW_OF,
    Verdict,
    compare,
    fingerprint_diff,
    hold_if_host_moved,
    is_performance,
    pooled_log_var,
    run_noise,
)
from harness.baselines.store import BaselineStore, baseline_key, combine_runs, profile_of
from harness.metrics import METRICS
from harness.paths import atomic_write
from harness.records import Record

VERDICTS = ("regressed", "missing", "not-comparable", "inconclusive", "new", "improved", "pass")
# Raw timings: they move with the host. Speed-ups (derived against the run's own reference) do not.
RAW_LATENCY = tuple(m.name for m in METRICS.ordered() if m.name.startswith("latency.") and not m.derive)
# Other wall-clock figures that move with the host: not judged while the reference's timings moved.
HOST_TIMED = ("compress.wall_s", "train.wall_s")
VERDICTS_FILE = "verdicts.jsonl"
VERDICTS_SCHEMA = "harness-verdicts/1"


def worst(statuses: Iterable[str]) -> str:
    """The most severe verdict of a group (order of ``VERDICTS``)."""
    s = set(statuses)
    return next((v for v in VERDICTS if v in s), "")


@dataclass(frozen=True)
class GatePolicy:
    """What turns verdicts into failures: ``--gate`` (every regression), ``--fail-on``
    (these metrics, with these tolerances), ``--strict`` (an uncompared metric fails too)."""

    gate: bool = False
    strict: bool = False
    fail_on: Mapping[str, Tolerance] = field(default_factory=dict)

    @property
    def gating(self) -> bool:
        return self.gate or self.strict or bool(self.fail_on)


def gate(verdicts: Iterable[Verdict], policy: GatePolicy) -> tuple[list[str], list[str]]:
    """(failures, warnings) of verdicts under ``policy``: a regression of a gated metric fails;
    an inconclusive one warns; an uncompared one (new, missing, not-comparable) warns, or
    fails under ``strict``."""
    if not policy.gating:
        return [], []
    chosen = [v for v in verdicts if policy.gate or policy.strict or v.metric in policy.fail_on]
    problems = [v.line() for v in chosen if v.status == "regressed"]
    unknown = [v for v in chosen if v.status in ("new", "missing", "not-comparable")]
    warns = [f"inconclusive: {v.line()}" for v in chosen if v.status == "inconclusive"]
    if unknown:
        kinds = sorted({v.status for v in unknown})
        msg = (f"{len(unknown)} metric(s) not compared ({', '.join(kinds)}): "
               f"{unknown[0].line()}{' ...' if len(unknown) > 1 else ''}")
        (problems if policy.strict else warns).append(f"--harness-strict: {msg}" if policy.strict else msg)
    return problems, warns


def judge_run(records: Iterable[Record], store: BaselineStore | None, *, fingerprint: dict[str, Any] | None,
              reference: Iterable[Record] = (), tolerances: Mapping[str, Tolerance] | None = None) -> list[Verdict]:
    """Verdicts of a run's records against the baselines of each record's own device class.

    Records of repeated runs (several ``run_id``) are judged as their median run with the
    run-to-run noise divided by the runs (``combine_runs``). ``reference``: the uncompressed
    reference's records as the run measured them for its derived figures (the run
    directory's ``.reference``), used where the run's records hold no ``none`` test of that
    model, profile and suite (a shard without it), so host drift is judged the same way in
    every shard. ``tolerances``: ``--fail-on`` overrides per metric.

    Comparability: when ``fingerprint`` (this run's) and the baseline file's differ in a
    field that moves performance (``harness.baselines.judge.COMPARABLE_FIELDS``), latency,
    memory and energy figures are ``not-comparable``, naming the fields; accuracy and sizes
    are judged.

    Host drift: when the uncompressed reference's own raw latency is not shown consistent
    with its baseline (regressed, improved or inconclusive), raw latencies of that model and
    profile are ``inconclusive`` for this run, never regressed: the machine moved, and the
    speed-ups measured against the run's own, interleaved reference are the comparable figures."""
    records, refs = list(records), [r for r in reference if r.metric in RAW_LATENCY]
    out: list[Verdict] = []
    for dc in sorted({r.device_class for r in records if r.device_class}):
        mine = [r for r in records if r.device_class == dc]
        out += _judge_class(mine, store, dc, dict(tolerances or {}), _tag_reference(refs, mine, dc), fingerprint)
    return out


def _tag_reference(refs: list[Record], records: list[Record], dc: str) -> list[Record]:
    """Reference records as the ``none`` test of each (suite, model, profile) these records
    judge that has no ``none`` record of its own for the metric."""
    have = {(r.suite, r.model, profile_of(r), r.metric) for r in records if r.spec == "none"}
    cells = {(r.suite, r.model, profile_of(r)) for r in records if r.suite}
    return [dataclasses.replace(ref, suite=suite, device_class=dc, technique="none", spec="none", config={})
            for suite, model, profile in sorted(cells) for ref in refs
            if ref.model == model and profile_of(ref) == profile and (suite, model, profile, ref.metric) not in have]


def _judge_class(records: list[Record], store: BaselineStore | None, device_class: str,
                 overrides: dict[str, Tolerance], reference: list[Record],
                 fingerprint: dict[str, Any] | None) -> list[Verdict]:
    records, reference = combine_runs(records), combine_runs(reference)
    out = _verdicts(records, store, device_class, overrides, True, fingerprint)
    extra = _verdicts(reference, store, device_class, overrides, False, fingerprint)
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


def _verdict_json(v: Verdict) -> dict[str, Any]:
    d = dataclasses.asdict(v)
    d["tolerance"] = dataclasses.asdict(v.tolerance) if v.tolerance else None
    return d


def _verdict_of(d: dict[str, Any]) -> Verdict:
    tol = d.get("tolerance")
    return Verdict(**{**d, "tolerance": Tolerance(**tol) if tol else None})


def _load(run_dir: Path) -> tuple[dict[str, Any], list[Verdict]] | None:
    """(header, verdicts) of ``run_dir``'s verdicts.jsonl, read once; None without a readable file."""
    try:
        lines = (run_dir / VERDICTS_FILE).read_text(encoding="utf-8").splitlines()
        head = json.loads(lines[0])
        if not isinstance(head, dict) or head.get("schema") != VERDICTS_SCHEMA:
            return None
        return head, [_verdict_of(json.loads(x)) for x in lines[1:]]
    except (OSError, ValueError, TypeError, IndexError, AttributeError):
        return None


def read_verdicts(run_dir: str | Path) -> list[Verdict] | None:
    """The verdicts stored in ``run_dir`` as they were written, fresh or not (None without a
    readable file): for readers that must not judge (``harness.report``)."""
    loaded = _load(Path(run_dir))
    return loaded[1] if loaded else None


def _inputs(run_dir: Path, root: str | Path | None, suites: Iterable[str],
            tolerances: Mapping[str, Tolerance] | None) -> dict:
    """What a run's verdicts depend on besides the code: the baselines root and every file of
    the judged suites there (by content), the tolerance overrides, and the records files."""
    files: dict[str, str] = {}
    for suite in sorted(set(suites)):
        d = Path(root) / suite if root is not None else None
        for f in sorted(d.glob("*.json")) if d is not None and d.is_dir() else []:
            files[f"{suite}/{f.name}"] = hashlib.sha256(f.read_bytes()).hexdigest()
    recs = {p.name: p.stat().st_size for p in sorted(Path(run_dir).glob("records-*.jsonl"))}
    return {"baselines": str(Path(root).resolve()) if root is not None else None, "suites": sorted(set(suites)),
            "files": files, "records": recs,
            "tolerances": {m: dataclasses.asdict(t) for m, t in sorted((tolerances or {}).items())}}


def write_verdicts(run_dir: str | Path, verdicts: list[Verdict], root: str | Path | None, suites: Iterable[str],
                   tolerances: Mapping[str, Tolerance] | None = None) -> Path:
    """``run_dir/verdicts.jsonl``: a header naming what the verdicts depend on (``suites``:
    those of the judged records), then one verdict a line."""
    path = Path(run_dir) / VERDICTS_FILE
    head = {"schema": VERDICTS_SCHEMA, **_inputs(Path(run_dir), root, suites, tolerances)}
    atomic_write(path, "".join(json.dumps(x, default=str) + "\n" for x in [head, *map(_verdict_json, verdicts)]))
    return path


def run_verdicts(run_dir: str | Path, baselines: str | Path | None = None, *,
                 tolerances: Mapping[str, Tolerance] | None = None, write: bool = False,
                 skip_bad_lines: bool = False) -> list[Verdict]:
    """The verdicts of a run directory: its ``verdicts.jsonl`` while that is fresh (same
    baselines root and file contents, tolerances and records), else ``judge_run`` on its
    records with its fingerprint and stored reference (``write``: store the result).
    ``baselines``: the root to judge against (default: the one the run used);
    ``tolerances``: ``--fail-on`` overrides (default: those the stored verdicts used)."""
    from harness.records import load_records
    from harness.rundir import read_reference, read_run_info

    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    root = baselines if baselines is not None else info.get("baselines")
    head, stored = _load(run_dir) or ({}, None)
    if tolerances is None:  # the overrides the run was judged with (--harness-fail-on)
        tolerances = {m: Tolerance(**t) for m, t in (head.get("tolerances") or {}).items()}
    # fresh: the same root, baseline contents, tolerances and records as when it was written
    if stored is not None and head == {"schema": VERDICTS_SCHEMA,
                                       **_inputs(run_dir, root, head.get("suites") or [], tolerances)}:
        return stored
    records = list(load_records(run_dir, skip_bad_lines=skip_bad_lines))
    vs = judge_run(records, BaselineStore(root) if root is not None else None, fingerprint=info.get("fingerprint"),
                   reference=read_reference(run_dir), tolerances=tolerances)
    if write:
        write_verdicts(run_dir, vs, root, {r.suite for r in records if r.suite}, tolerances)
    return vs


def judge_runs(run_a: list[str | Path], run_b: list[str | Path], *, skip_bad_lines: bool = False) -> list[Verdict]:
    """Run B's verdicts with run A standing in for the baseline (``harness compare A B``): the
    same ``judge_run``, with both sides' samples (and repeats' run-to-run noise), and speed
    judged only where the two runs' fingerprints agree: the same-host mode."""
    from harness.merge import load_many
    from harness.rundir import read_reference, read_run_info

    a, _ = load_many(list(run_a), skip_bad_lines=skip_bad_lines)
    b, _ = load_many(list(run_b), skip_bad_lines=skip_bad_lines)
    store = BaselineStore.of(a, fingerprint=read_run_info(run_a[0]).get("fingerprint"))
    return judge_run(b, store, fingerprint=read_run_info(run_b[0]).get("fingerprint"),
                     reference=[r for d in run_b for r in read_reference(d)])


__all__ = ["BaselineError", "GatePolicy", "VERDICTS", "Verdict", "gate", "judge_run", "judge_runs", "read_verdicts",
           "run_verdicts", "worst", "write_verdicts"]
