"""The ``bench`` fixture object and the per-session state behind it.

``Session`` lives once per pytest process (controller or xdist worker): it caches loaded
models, calibration sets and the uncompressed reference's measurements, and owns the
process's ``RecordWriter``. The reference is measured once per model per *run*: the
first process to need it measures it under a file lock in the run directory and the
others read the stored records, so derived figures (compression ratio, speed-ups,
deltas) use one reference even under ``pytest -n 2``.
"""
from __future__ import annotations

import copy
import dataclasses
import fcntl
import json
import os
import re
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness.baselines import BaselineError, BaselineStore, Tolerance
from harness.paths import atomic_write
from harness.records import DERIVED, Record, RecordWriter

QUICK_ONLY_REFERENCE = {"ppl.lm_eval"}  # ~6 s per model on 2 cores: reference only in quick mode


@dataclass
class Options:
    out: Path
    run_id: str
    baselines: Path
    gate: bool = False
    fail_on: dict[str, Tolerance] = field(default_factory=dict)
    strict: bool = False
    device: str = "auto"
    models: list[str] = field(default_factory=lambda: ["harness-tiny"])
    quick: bool = False
    shard: tuple[int, int] | None = None
    markdown: Path | None = None
    threads: int | None = None  # None: usable cores / xdist workers
    worker: str = "main"  # xdist worker id of this process
    workers: int = 1  # xdist worker count

    @property
    def gating(self) -> bool:
        return self.gate or self.strict or bool(self.fail_on)

    @property
    def profile(self) -> str:
        return "quick" if self.quick else "full"

    @property
    def worker_tag(self) -> str:
        w = self.worker
        return f"shard{self.shard[0]}of{self.shard[1]}-{w}" if self.shard else w


def auto_threads(workers: int = 1) -> int:
    """Usable cores shared among xdist workers (oversubscribed OpenMP threads spin and
    make CPU latency several times slower and noisier)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, workers))


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class Session:
    """Per-process caches and the record writer."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self._writer: RecordWriter | None = None
        self._models: dict[str, Any] = {}
        self._calib: dict[str, Any] = {}
        self._ref: dict[str, dict[str, Record]] = {}
        self._device: str | None = None
        self.store = BaselineStore(opts.baselines)
        self.baseline_error: str | None = None

    @property
    def device(self) -> str:
        if self._device is None:
            import torch

            want = self.opts.device
            self._device = ("cuda" if torch.cuda.is_available() else "cpu") if want == "auto" else want
            torch.set_num_threads(self.opts.threads or auto_threads(self.opts.workers))
        return self._device

    @property
    def device_class(self) -> str:
        from harness.measure.environment import device_class

        return device_class(self.device)

    @property
    def fingerprint_id(self) -> str:
        from harness.measure.environment import fingerprint_id

        return fingerprint_id(self.device)

    def write(self, records: list[Record]) -> None:
        if self._writer is None:
            self._writer = RecordWriter(self.opts.out, worker=self.opts.worker_tag)
        self._writer.write(records)

    def load(self, name: str):
        if name not in self._models:
            import harness

            self._models[name] = harness.load_model(name, device=self.device)
        return self._models[name]

    def calibration(self, lm) -> Any:
        if lm.name not in self._calib:
            import harness

            n = 16 if self.opts.quick else 32
            self._calib[lm.name] = harness.get_calibration(lm.tokenizer, n=n, seq_len=128, seed=0)
        return self._calib[lm.name]

    def eval_context(self, reference=None, cache_factory=None, compression=None):
        from harness.config import EvalConfig, LatencyConfig
        from harness.evaluation import EvalContext

        if self.opts.quick:
            return EvalContext(LatencyConfig(prompt_len=64, decode_tokens=16, budget_s=1.0, min_repeats=3),
                               EvalConfig(max_tokens=8192), reference=reference, cache_factory=cache_factory,
                               compression=compression)
        return EvalContext(reference=reference, cache_factory=cache_factory, compression=compression)

    def reference(self, lm, metrics: Iterable[str]) -> dict[str, Record]:
        """The uncompressed model's records for ``metrics``: measured once per run."""
        from harness.evaluation import evaluate

        cache = self._ref.setdefault(lm.name, {})
        missing = [m for m in metrics if m not in cache]
        if missing:
            slug = re.sub(r"[^A-Za-z0-9._-]+", "_", lm.name)
            path = self.opts.out / ".reference" / f"{slug}-{self.opts.profile}-{self.device}.json"
            with _locked(path.with_suffix(".lock")):
                stored = json.loads(path.read_text()) if path.is_file() else {}
                cache.update({m: Record.from_dict(stored[m]) for m in missing if m in stored})
                todo = [m for m in missing if m not in cache]
                if todo:
                    for r in evaluate(lm, lm.model, todo, self.eval_context(reference=lm.model)):
                        cache[r.metric] = r
                    stored.update({m: cache[m].to_dict() for m in todo if m in cache})
                    atomic_write(path, json.dumps(stored, default=str))
        return {m: cache[m] for m in metrics if m in cache}

    def baselines(self, suite: str):
        try:
            return self.store.get(suite, self.device_class)
        except BaselineError as e:
            self.baseline_error = str(e)
            raise


def _suite_of(item: pytest.Item) -> str:
    stem = Path(str(item.fspath)).stem
    return stem[5:] if stem.startswith("test_") else stem


class Bench:
    """What a suite test uses: ``bench.compress(spec)``, ``bench.measure(result)``,
    ``bench.record(metric, value)``. Everything measured becomes a Record in the run."""

    def __init__(self, session: Session, item: pytest.Item) -> None:
        self.session = session
        self.item = item
        params = getattr(getattr(item, "callspec", None), "params", {})
        self.model_name: str = params.get("harness_model") or session.opts.models[0]
        self.suite = _suite_of(item)
        self.result = None  # last CompressionResult
        self.records: list[Record] = []

    @property
    def quick(self) -> bool:
        return self.session.opts.quick

    @property
    def device(self) -> str:
        return self.session.device

    @property
    def lm(self):
        """The session-cached LoadedModel (do not modify ``lm.model``; compress copies it)."""
        return self.session.load(self.model_name)

    # -- context -------------------------------------------------------------------------
    def _context(self, result=None) -> dict[str, Any]:
        ctx = dict(run_id=self.session.opts.run_id, suite=self.suite, test_id=self.item.nodeid,
                   model=self.model_name, device=self.session.fingerprint_id,
                   device_class=self.session.device_class)
        if result is not None:
            ctx.update(technique=result.technique, spec=result.spec, config=result.config_dict,
                       storage=result.storage)
        return ctx

    def _emit(self, records: list[Record], result=None, **overrides: Any) -> list[Record]:
        ctx = {**self._context(result if result is not None else self.result), **overrides}
        out = []
        for r in records:
            r = dataclasses.replace(r, **{k: v for k, v in ctx.items() if v is not None},
                                    extra={**r.extra, "profile": self.session.opts.profile})
            out.append(r)
        self.session.write(out)
        self.records += out
        return out

    # -- API -----------------------------------------------------------------------------
    def compress(self, spec: str):
        """Compress a copy of the cached model; skip (with the reason) where the technique
        cannot run on this device or model kind. Records compress.wall_s / peak_rss_mb."""
        import harness

        tech = harness.make(spec)
        lm = self.lm
        reason = tech.unsupported_reason(self.device, lm.kind)
        if reason:
            pytest.skip(reason)
        calib = self.session.calibration(lm) if tech.needs_calibration or tech.uses_calibration else None
        model = lm.model if tech.name == "none" else copy.deepcopy(lm.model)
        res = harness.compress(model, tech, calibration=calib, kind=lm.kind)
        self.result = res
        if tech.name != "none":
            recs = [Record("compress.wall_s", res.wall_s, extra={"calibration": calib.describe()} if calib else {}),
                    Record("compress.peak_rss_mb", res.peak_rss_mb) if res.peak_rss_mb is not None
                    else Record.na("compress.peak_rss_mb", "psutil unavailable")]
            self._emit(recs, res)
        return res

    def default_metrics(self, reference: bool) -> list[str]:
        from harness.evaluation import parse_metrics

        names = parse_metrics(None, self.lm.kind)
        if self.quick and not reference:
            names = [m for m in names if m not in QUICK_ONLY_REFERENCE]
        derived = DERIVED if self.lm.kind == "causal-lm" else ["size.compression_ratio"]
        return names + [m for m in derived if DERIVED[m][0] in names]

    def measure(self, target=None, metrics: Iterable[str] | str | None = None) -> list[Record]:
        """Measure a CompressionResult (or a module; default: the last compressed model),
        add derived metrics against the uncompressed reference, write and return records."""
        from harness.evaluation import evaluate, parse_metrics

        lm = self.lm
        result = target if hasattr(target, "storage") and hasattr(target, "model") else None
        if target is None:
            result = self.result
        model = result.model if result is not None else (target if target is not None else lm.model)
        is_ref = model is lm.model or (result is not None and result.technique == "none")
        want = parse_metrics(metrics, lm.kind) if metrics is not None else self.default_metrics(is_ref)
        skipped = [] if metrics is not None or is_ref else [m for m in QUICK_ONLY_REFERENCE
                                                            if self.quick and m in parse_metrics(None, lm.kind)]
        sources = {DERIVED[m][0] for m in DERIVED if m in want}
        base = [m for m in want if m not in DERIVED]
        ref = self.session.reference(lm, list(dict.fromkeys(base + sorted(sources))))
        if is_ref:
            recs = [dataclasses.replace(ref[m], record_id=uuid.uuid4().hex) for m in base if m in ref]
        else:
            cf = getattr(result, "cache_factory", None) or getattr(model, "harness_cache_factory", None)
            recs = evaluate(lm, model, base, self.session.eval_context(reference=lm.model, cache_factory=cf,
                                                                       compression=result))
            for r in recs:
                rr = ref.get(r.metric)
                if r.value is not None and rr is not None and rr.value is not None:
                    r.extra = {**r.extra, "reference": rr.value, "delta": r.value - rr.value,
                               **({"delta_pct": 100 * (r.value / rr.value - 1)} if rr.value else {})}
        recs += [Record.na(m, "not measured in --harness-quick mode (the reference's is)") for m in skipped]
        by = {r.metric: r for r in recs}
        for m in (m for m in want if m in DERIVED):
            recs.append(self._derived(m, by, ref, is_ref, lm, model, result))
        return self._emit(recs, result)

    def _derived(self, metric: str, by: dict[str, Record], ref: dict[str, Record], is_ref: bool,
                 lm, model, result) -> Record:
        from harness.evaluation import derive, evaluate

        src = DERIVED[metric][0]
        r = by.get(src) or (ref.get(src) if is_ref else None)
        if r is None and not is_ref:
            got = evaluate(lm, model, [src], self.session.eval_context(reference=lm.model))
            r = got[0] if got else None
        return derive(metric, r, ref.get(src))

    def record(self, metric: str | Record, value: float | None = None, **fields: Any) -> Record:
        """Record a custom figure (``bench.record("ppl.window", 12.3, n=4)``) or a Record.
        A value of None needs ``reason=...`` and is recorded as N/A."""
        if isinstance(metric, Record):
            rec = metric
        elif value is None:
            rec = Record.na(metric, fields.pop("reason", ""), **fields)
        else:
            rec = Record(metric, value, **fields)
        explicit = {k: fields[k] for k in ("model", "technique", "spec", "storage", "config") if k in fields}
        return self._emit([rec], **explicit)[0]
