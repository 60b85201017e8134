"""What one pytest process loads or measures once and reuses across tests: models,
calibration windows, and the uncompressed reference's measurements.

The reference is measured once per model per *run*: the first process to need it measures
it under a file lock in the run directory (``harness.rundir.reference_path``) and the others
read the stored records, so derived figures (compression ratio, speed-ups, deltas) use one
reference even under ``pytest -n 2``, and the run's verdicts judge host drift from it.
"""
from __future__ import annotations

import fcntl
import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.options import Options
from harness.paths import atomic_write
from harness.records import Record


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class Caches:
    """Models, calibration windows and reference records of one process, for ``opts``."""

    def __init__(self, opts: Options, device: Callable[[], str]) -> None:
        self.opts = opts
        self._device = device  # resolved lazily: torch starts only when a test needs it
        self._models: dict[str, Any] = {}
        self._calib: dict[str, Any] = {}
        self._ref: dict[str, dict[str, Record]] = {}

    def load(self, name: str):
        if name not in self._models:
            from harness.models.zoo import load_model

            self._models[name] = load_model(name, device=self._device())
        return self._models[name]

    def calibration(self, lm) -> Any:
        if lm.name not in self._calib:
            from harness.calibration import get_calibration

            n = 16 if self.opts.quick else 32
            self._calib[lm.name] = get_calibration(lm.tokenizer, n=n, seq_len=128, seed=0,
                                                   text_file=self.opts.eval.calibration_text)
        return self._calib[lm.name]

    def reference(self, lm, metrics: Iterable[str], measure: Callable[[list[str]], Iterable[Record]]
                  ) -> dict[str, Record]:
        """The uncompressed model's records for ``metrics``: measured once per run by
        ``measure(missing_metrics)``, stored under a lock, read back by other processes."""
        from harness.rundir import reference_path

        cache = self._ref.setdefault(lm.name, {})
        missing = [m for m in metrics if m not in cache]
        if missing:
            path = reference_path(self.opts.out, lm.name, self.opts.profile, self._device())
            with _locked(path.with_suffix(".lock")):
                stored = json.loads(path.read_text()) if path.is_file() else {}
                cache.update({m: Record.from_dict(stored[m]) for m in missing if m in stored})
                todo = [m for m in missing if m not in cache]
                if todo:
                    for r in measure(todo):
                        cache[r.metric] = r
                    stored.update({m: cache[m].to_dict() for m in todo if m in cache})
                    atomic_write(path, json.dumps(stored, default=str))
        return {m: cache[m] for m in metrics if m in cache}

    def reference_records(self, model: str) -> list[Record]:
        """What this process holds of ``model``'s reference, with the run's profile."""
        import dataclasses

        return [dataclasses.replace(r, extra={**r.extra, "profile": self.opts.profile})
                for r in self._ref.get(model, {}).values()]
