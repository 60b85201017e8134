"""What a measuring process writes into its run directory: its records (one JSONL file per
xdist worker), each worker's fingerprint, ``run.json``, and, in the controller at the end,
``verdicts.jsonl`` and the Markdown summary."""
from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any

from harness.baselines.judge import Verdict
from harness.options import Options
from harness.records import Record, RecordWriter


def _commit() -> str | None:
    """The git commit of the code under test (the working directory), for explaining a step
    in nightly history; None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class RunWriter:
    """The run directory's files, written by one process for ``opts`` on ``device()``."""

    def __init__(self, opts: Options, device: Callable[[], str], args: list[str] | None = None) -> None:
        self.opts = opts
        self._device = device
        self.args = list(args or [])
        self.started = time.time()
        self._records: RecordWriter | None = None

    def write(self, records: list[Record]) -> None:
        o = self.opts
        if self._records is None:
            self._records = RecordWriter(o.out, worker=o.worker_tag)
            if o.worker != "main":  # each xdist worker's own fingerprint (its pinned GPU)
                from harness.measure.environment import write_fingerprint

                write_fingerprint(o.out / f"fingerprint-{o.worker_tag}.json", self._device())
        self._records.write(records)

    def run_info(self, **fields: Any) -> None:
        """Merge ``fields`` into the run's run.json (with the fingerprint once it is final)."""
        from harness.rundir import harness_version, write_run_info

        o = self.opts
        info = dict(run_id=o.run_id, started=self.started, profile=o.profile, models=list(o.models),
                    baselines=str(o.baselines), device=o.device,
                    shard=f"{o.shard[0]}/{o.shard[1]}" if o.shard else None, args=self.args,
                    harness_version=harness_version(), commit=_commit(), **fields)
        if fields.get("status") != "running":
            try:
                from harness.measure.environment import device_class, fingerprint

                info.update(fingerprint=fingerprint(self._device()), device_class=device_class(self._device()))
            except Exception as e:  # the fingerprint must never hide the run's result
                info["fingerprint_error"] = str(e)
        write_run_info(o.out, **info)

    def markdown(self, verdicts: list[Verdict] | None, error: str = "") -> None:
        """The Markdown summary at ``opts.markdown`` (or why there is none)."""
        from harness.report.markdown import render_markdown

        try:
            text = f"harness: no summary ({error})\n" if error else render_markdown(self.opts.out, verdicts)
        except ValueError as e:
            text = f"harness: no summary ({e})\n"
        path = self.opts.markdown
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
