"""Per-process state of a pytest session that measures: options, caches, the run directory
and gating. The plugin (``harness.plugin``) only wires these into pytest's hooks; ``Bench``
(``harness.bench``) is the thin API tests call.

``Session`` lives once per pytest process (controller or xdist worker): it caches loaded
models, calibration sets and the uncompressed reference's measurements, and owns the
process's ``RecordWriter``. The reference is measured once per model per *run*: the
first process to need it measures it under a file lock in the run directory and the
others read the stored records, so derived figures (compression ratio, speed-ups,
deltas) use one reference even under ``pytest -n 2``. ``Controller`` runs only in the
controlling process: it writes ``outcomes-*.jsonl`` and ``run.json``.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness.baselines import BaselineError, BaselineStore, Tolerance
from harness.paths import atomic_write
from harness.records import Record, RecordWriter


class HarnessBaselineWarning(UserWarning):
    """A measured figure that could not be compared with a baseline."""


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
    eval_opts: dict[str, Any] = field(default_factory=dict)  # plugin._eval_opts: EvalConfig fields, texts, tasks

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


def _commit() -> str | None:
    """The git commit of the code under test (the working directory), for explaining a step
    in nightly history; None outside a git checkout."""
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


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

    def __init__(self, opts: Options, args: list[str] | None = None) -> None:
        self.opts = opts
        self.started = time.time()
        self.args = list(args or [])
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
            if self.opts.worker != "main":  # each xdist worker's own fingerprint (its pinned GPU)
                from harness.measure.environment import write_fingerprint

                write_fingerprint(self.opts.out / f"fingerprint-{self.opts.worker_tag}.json", self.device)
        self._writer.write(records)

    def load(self, name: str):
        if name not in self._models:
            from harness.models.zoo import load_model

            self._models[name] = load_model(name, device=self.device)
        return self._models[name]

    def calibration(self, lm) -> Any:
        if lm.name not in self._calib:
            from harness.calibration import get_calibration

            n = 16 if self.opts.quick else 32
            self._calib[lm.name] = get_calibration(lm.tokenizer, n=n, seq_len=128, seed=0,
                                                   text_file=self.opts.eval_opts.get("calibration_text"))
        return self._calib[lm.name]

    def eval_context(self, reference=None, cache_factory=None, compression=None):
        from harness.config import EvalConfig, LatencyConfig
        from harness.evaluation import EvalContext

        ev = {**({"max_tokens": 8192} if self.opts.quick else {}), **self.opts.eval_opts.get("eval", {})}
        # The budget, not a cap of 50, bounds the fast prefill rounds; decode rounds are slow, so
        # min_repeats sets their count: 6 left the decode speed-up's interval too wide to see a
        # 15% slower forward (docs/gating.md), 12 costs about one second more per test.
        lat = (LatencyConfig(prompt_len=64, decode_tokens=16, budget_s=1.0, min_repeats=12, max_repeats=200)
               if self.opts.quick else None)
        return EvalContext(lat or LatencyConfig(), EvalConfig(**ev), reference=reference, cache_factory=cache_factory,
                           compression=compression)

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

    def write_run(self, **fields: Any) -> None:
        """Merge ``fields`` into the run's run.json (with the fingerprint once it is final)."""
        from harness.rundir import harness_version, write_run_info

        o = self.opts
        info = dict(run_id=o.run_id, started=self.started, profile=o.profile, models=o.models,
                    baselines=str(o.baselines), device=o.device,
                    shard=f"{o.shard[0]}/{o.shard[1]}" if o.shard else None, args=self.args,
                    harness_version=harness_version(), commit=_commit(), **fields)
        if fields.get("status") != "running":
            try:
                from harness.measure.environment import device_class, fingerprint

                info.update(fingerprint=fingerprint(self.device), device_class=device_class(self.device))
            except Exception as e:  # the fingerprint must never hide the run's result
                info["fingerprint_error"] = str(e)
        write_run_info(o.out, **info)

    def gate(self, suite: str, records: list[Record]) -> tuple[list[str], list[str]]:
        """(failures, warnings) of one test's records against the baselines and the
        --harness-gate / --harness-fail-on / --harness-strict settings. The run's own
        reference (measured once per run, on any worker) tells whether the host moved."""
        from harness.baselines import RAW_LATENCY, verdicts

        o = self.opts
        cached = self._ref.get(records[0].model, {}) if records else {}
        refs = [dataclasses.replace(r, suite=suite, device_class=self.device_class, technique="none", spec="none",
                                    config={}, extra={**r.extra, "profile": o.profile})
                for r in cached.values() if r.metric in RAW_LATENCY]
        try:
            self.baselines(suite)
            from harness.measure.environment import fingerprint

            vs = verdicts(records, self.store, self.device_class, overrides=o.fail_on, reference_records=refs,
                          fingerprint=fingerprint(self.device))
        except BaselineError as e:
            return ([str(e)], []) if o.gating else ([], [f"baselines not used: {e}"])
        if not o.gating:
            return [], []
        chosen = [v for v in vs if o.gate or o.strict or v.metric in o.fail_on]
        problems = [v.line() for v in chosen if v.status == "regressed"]
        unknown = [v for v in chosen if v.status in ("new", "missing", "not-comparable")]
        warns = [f"inconclusive: {v.line()}" for v in chosen if v.status == "inconclusive"]
        if unknown:
            kinds = sorted({v.status for v in unknown})
            msg = (f"{len(unknown)} metric(s) not compared ({', '.join(kinds)}): "
                   f"{unknown[0].line()}{' ...' if len(unknown) > 1 else ''}")
            (problems if o.strict else warns).append(f"--harness-strict: {msg}" if o.strict else msg)
        return problems, warns

    def write_markdown(self) -> None:
        from harness.report.markdown import render_markdown

        try:
            text = render_markdown(self.opts.out, baselines=self.opts.baselines)
        except ValueError as e:
            text = f"harness: no summary ({e})\n"
        path = self.opts.markdown
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")

    def baselines(self, suite: str):
        try:
            return self.store.get(suite, self.device_class)
        except BaselineError as e:
            self.baseline_error = str(e)
            raise


class Controller:
    """Hooks that only the controlling process runs (outcomes, run.json, summary)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.pending: list[dict] = []
        self.interrupted = False
        self.expected: int | None = None  # tests selected to run
        self.reported: set[str] = set()

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if not hasattr(session.config, "workerinput") and session.items:
            self.expected = len(session.items)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call" and report.outcome == "passed":
            return
        outcome = "error" if report.when != "call" and report.outcome == "failed" else report.outcome
        if hasattr(report, "wasxfail"):
            outcome = "xfailed" if report.skipped else "xpassed"
        msg = ""
        if report.longrepr is not None and outcome != "passed":
            crash = getattr(report.longrepr, "reprcrash", None)
            msg = crash.message if crash is not None else (
                report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr))
        node = getattr(report, "node", None)
        self.reported.add(report.nodeid)
        self.pending.append({"nodeid": report.nodeid, "when": report.when, "outcome": outcome,
                             "duration": round(report.duration, 4),
                             "message": str(msg).splitlines()[0][:500] if msg else "",
                             "worker": getattr(getattr(node, "gateway", None), "id", None)})
        self.flush()

    def flush(self) -> None:
        from harness.paths import append_jsonl

        o = self.session.opts
        if self.pending and o.out.is_dir():
            tag = f"shard{o.shard[0]}of{o.shard[1]}" if o.shard else "main"
            append_jsonl(o.out / f"outcomes-{tag}.jsonl", self.pending)
            self.pending = []

    def pytest_keyboard_interrupt(self, excinfo) -> None:
        self.interrupted = True

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.flush()
        o = self.session.opts
        if not o.out.is_dir():
            return
        reason = ""
        if self.interrupted or exitstatus == pytest.ExitCode.INTERRUPTED:
            reason = "interrupted (Ctrl-C or a fatal error) before all tests ran"
        elif session.shouldstop or session.shouldfail:
            reason = f"stopped early: {session.shouldstop or session.shouldfail}"
        elif self.expected is not None and len(self.reported) < self.expected:
            reason = f"only {len(self.reported)} of {self.expected} selected tests finished"
        self.session.write_run(status="partial" if reason else "complete", partial_reason=reason,
                               finished=time.time(), exitstatus=int(exitstatus), tests_failed=session.testsfailed,
                               tests_collected=session.testscollected)
        if o.markdown:
            self.session.write_markdown()

    def pytest_terminal_summary(self, terminalreporter, exitstatus: int, config: pytest.Config) -> None:
        o = self.session.opts
        if not o.out.is_dir():
            return
        from harness.records import NoRecordsError
        from harness.report.summary import summary_lines

        tr = terminalreporter
        try:
            lines = summary_lines(o.out, baselines=o.baselines, fail_on=o.fail_on)
        except NoRecordsError:
            tr.write_sep("=", "harness", yellow=True)
            tr.write_line(f"harness: no records were written to {o.out}")
            return
        except ValueError as e:  # corrupt baseline etc.: one line, never a traceback
            tr.write_sep("=", "harness", red=True)
            tr.write_line(f"harness: summary unavailable: {str(e).splitlines()[0]}")
            return
        tr.write_sep("=", "harness summary")
        for line in lines:
            tr.write_line(line)
        if o.markdown:
            tr.write_line(f"markdown summary: {o.markdown}")
