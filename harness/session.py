"""Per-process state of a pytest session that measures: the options, the device, the caches
(``harness.caches``), the run directory's files (``harness.runwriter``) and the per-test
fail-fast gate. The plugin (``harness.plugin``) only wires it into pytest's hooks; ``Bench``
(``harness.bench``) is the thin API tests call; ``harness.controller`` runs at the end in the
controlling process and judges the whole run once.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from harness.baselines.file import BaselineError
from harness.baselines.store import BaselineStore
from harness.caches import Caches
from harness.options import Options, auto_threads
from harness.records import Record
from harness.runwriter import RunWriter


class HarnessBaselineWarning(UserWarning):
    """A measured figure that could not be compared with a baseline."""


class Session:
    """One pytest process (controller or xdist worker): options, device, caches, writer."""

    def __init__(self, opts: Options, args: list[str] | None = None) -> None:
        self.opts = opts
        self._device: str | None = None
        self.caches = Caches(opts, lambda: self.device)
        self.writer = RunWriter(opts, lambda: self.device, args)
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

    def set_eval(self, **changes: Any) -> None:
        """Change the evaluation settings for the tests that follow (a suite's fixed budget)."""
        self.opts = self.opts.with_eval(**changes)
        self.caches.opts = self.writer.opts = self.opts

    def write(self, records: list[Record]) -> None:
        self.writer.write(records)

    def load(self, name: str):
        return self.caches.load(name)

    def calibration(self, lm) -> Any:
        return self.caches.calibration(lm)

    def eval_context(self, reference=None, cache_factory=None, compression=None):
        from harness.config import LatencyConfig
        from harness.evaluation import EvalContext

        ev = self.opts.eval.eval_config(**({"max_tokens": 8192} if self.opts.quick else {}))
        # The budget, not a cap of 50, bounds the fast prefill rounds; decode rounds are slow, so
        # min_repeats sets their count: 6 left the decode speed-up's interval too wide to see a
        # 15% slower forward (docs/results/gating.md), 12 costs about one second more per test.
        lat = (LatencyConfig(prompt_len=64, decode_tokens=16, budget_s=1.0, min_repeats=12, max_repeats=200)
               if self.opts.quick else None)
        return EvalContext(lat or LatencyConfig(), ev, reference=reference, cache_factory=cache_factory,
                           compression=compression)

    def reference(self, lm, metrics: Iterable[str]) -> dict[str, Record]:
        """The uncompressed model's records for ``metrics``: measured once per run."""
        from harness.evaluation import evaluate

        return self.caches.reference(lm, metrics, lambda todo: evaluate(
            lm, lm.model, todo, self.eval_context(reference=lm.model)))

    def gate(self, records: list[Record]) -> tuple[list[str], list[str]]:
        """(failures, warnings) of one test's records under the run's gate policy: the same
        ``judge_run`` as the whole run's verdicts, on these records, with the reference this
        process measured (so host drift is judged the same way in every shard)."""
        from harness.baselines.verdicts import gate, judge_run

        o = self.opts
        try:
            for suite in {r.suite for r in records if r.suite}:
                self.baselines(suite)
            if not o.gating:
                return [], []
            from harness.measure.environment import fingerprint

            model = records[0].model if records else ""
            vs = judge_run(records, self.store, fingerprint=fingerprint(self.device),
                           reference=self.caches.reference_records(model), tolerances=o.fail_on)
        except BaselineError as e:
            return ([str(e)], []) if o.gating else ([], [f"baselines not used: {e}"])
        return gate(vs, o.policy)

    def baselines(self, suite: str):
        try:
            return self.store.get(suite, self.device_class)
        except BaselineError as e:
            self.baseline_error = str(e)
            raise
