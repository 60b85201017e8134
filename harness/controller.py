"""The controlling pytest process of a measuring run: it writes ``outcomes-*.jsonl`` as tests
finish, and at the end judges the whole run once (``judge_run``), writes ``verdicts.jsonl``,
``run.json`` and the Markdown summary, and prints the terminal summary from those verdicts.
xdist workers never run these hooks."""
from __future__ import annotations

import time

import pytest

from harness.baselines.judge import Verdict
from harness.session import Session


class Controller:
    """Hooks that only the controlling process runs (outcomes, verdicts, run.json, summary)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.pending: list[dict] = []
        self.interrupted = False
        self.expected: int | None = None  # tests selected to run
        self.reported: set[str] = set()
        self.verdicts: list[Verdict] | None = None
        self.verdict_error = ""

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

    def judge(self) -> None:
        """The run's verdicts, once: every record of the run directory against the baselines,
        with the run's fingerprint and the reference it measured; written to verdicts.jsonl."""
        from harness.baselines.verdicts import run_verdicts
        from harness.records import NoRecordsError

        o = self.session.opts
        try:
            self.verdicts = run_verdicts(o.out, o.baselines, tolerances=o.fail_on, write=True)
        except NoRecordsError:  # the summary says so
            self.verdicts = []
        except ValueError as e:  # damaged records, a corrupt baseline: said, not raised
            self.verdict_error = str(e).splitlines()[0]

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
        self.session.writer.run_info(status="partial" if reason else "complete", partial_reason=reason,
                                     finished=time.time(), exitstatus=int(exitstatus),
                                     tests_failed=session.testsfailed, tests_collected=session.testscollected)
        self.judge()  # after run.json: the verdicts need the run's final fingerprint
        if o.markdown:
            self.session.writer.markdown(self.verdicts, self.verdict_error)

    def pytest_terminal_summary(self, terminalreporter, exitstatus: int, config: pytest.Config) -> None:
        o = self.session.opts
        if not o.out.is_dir():
            return
        from harness.records import NoRecordsError
        from harness.report.summary import summary_lines

        tr = terminalreporter
        try:
            if self.verdicts is None and self.verdict_error:
                raise ValueError(self.verdict_error)
            lines = summary_lines(o.out, self.verdicts)
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
