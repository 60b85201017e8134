"""The ``bench`` fixture object: the thin API a suite test calls. Compression and
measurement go through ``harness.evaluation`` (the same path as ``harness eval``); the
per-process caches, run directory and gating are ``harness.session``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from harness.metrics import METRICS
from harness.peakmem import ISOLATION
from harness.records import Record
from harness.session import Session

QUICK_ONLY_REFERENCE = {"ppl.lm_eval"}  # ~6 s per model on 2 cores: reference only in quick mode


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
        from harness.evaluation import compress_model
        from harness.techniques.base import DeviceUnsupportedError

        lm = self.lm
        used: list[Any] = []

        def calibration():
            used.append(self.session.calibration(lm))
            return used[-1]

        try:
            res = compress_model(lm, spec, calibration=calibration, device=self.device)
        except DeviceUnsupportedError as e:
            pytest.skip(str(e))
        self.result = res
        if res.technique != "none":
            recs = [Record("compress.wall_s", res.wall_s, extra={"calibration": used[0].describe()} if used else {}),
                    Record("compress.peak_rss_mb", res.peak_rss_mb, extra={"isolation": ISOLATION})
                    if res.peak_rss_mb is not None
                    else Record.na("compress.peak_rss_mb", res.peak_rss_reason or "peak RSS unreadable")]
            recs += [Record(k, v) for k, v in getattr(res, "figures", {}).items()]  # train.* of techniques that train
            self._emit(recs, res)
        return res

    def default_metrics(self, reference: bool) -> list[str]:
        from harness.evaluation import parse_metrics

        names = parse_metrics(None, self.lm.kind)
        if self.quick and not reference:
            names = [m for m in names if m not in QUICK_ONLY_REFERENCE]
        tasks = [m for m in self.session.opts.eval.task_metrics if self.lm.kind == "causal-lm"]
        return names + [m.name for m in METRICS.ordered() if m.derive and self.lm.kind in m.kinds
                        and m.derive[0] in names] + tasks

    def measure(self, target=None, metrics: Iterable[str] | str | None = None) -> list[Record]:
        """Measure a CompressionResult (or a module; default: the last compressed model) next
        to the uncompressed reference (deltas, derived ratios), write and return records."""
        from harness.evaluation import measure_result, parse_metrics, unwrap

        lm = self.lm
        result = target if target is not None else (self.result if self.result is not None else lm.model)
        _, is_ref = unwrap(lm, result)
        want = parse_metrics(metrics, lm.kind) if metrics is not None else self.default_metrics(is_ref)
        skipped = [] if metrics is not None or is_ref else [m for m in QUICK_ONLY_REFERENCE
                                                            if self.quick and m in parse_metrics(None, lm.kind)]
        recs = measure_result(lm, result, want, self.session.eval_context(),
                              reference=lambda ms: self.session.reference(lm, ms))
        recs += [Record.na(m, "not measured in --harness-quick mode (the reference's is)") for m in skipped]
        return self._emit(recs, result if hasattr(result, "storage") else None)

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
