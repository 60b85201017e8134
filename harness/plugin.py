"""pytest plugin (entry point ``pytest11: harness``): options, markers, the ``bench``
fixture, baseline gating, run directory bookkeeping and the terminal summary.

Inert for test sessions that never use ``bench``: nothing is written unless a test
records something or ``--harness-out`` is given. Under pytest-xdist the controller picks
the run id and directory and hands them to the workers; each worker writes its own
``records-<worker>.jsonl``; the controller writes ``outcomes-*.jsonl`` and ``run.json``
and merges records for the summary.
"""
from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import pytest

from harness.bench import Bench, Options, Session

SESSION = pytest.StashKey[Session]()
STARTED = pytest.StashKey[float]()
ITEM_BENCH = pytest.StashKey[Bench]()


class HarnessBaselineWarning(UserWarning):
    """A measured figure that could not be compared with a baseline."""


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("harness", "llm-compression-harness (bench fixture, records, baselines, gating)")
    g.addoption("--harness-out", metavar="DIR", default=None,
                help="run directory for records/outcomes/run.json (default: reports/<run-id>/)")
    g.addoption("--harness-baselines", metavar="DIR", default=None,
                help="baselines root holding <suite>/<device-class>.json (default: ./baselines)")
    g.addoption("--harness-gate", action="store_true",
                help="fail a test whose metrics regressed against its baseline")
    g.addoption("--harness-fail-on", metavar="METRIC:TOL", action="append", default=[],
                help="gate METRIC with tolerance TOL (relative '2%%' or absolute '0.01'); repeatable")
    g.addoption("--harness-strict", action="store_true",
                help="with gating: a missing/foreign baseline fails the test instead of warning")
    g.addoption("--harness-device", choices=["auto", "cpu", "cuda"], default="auto",
                help="device for bench models (auto: cuda if available)")
    g.addoption("--harness-model", metavar="NAME", action="append", default=[],
                help="model for bench (name or local HF dir); repeat to run suites on several")
    g.addoption("--harness-technique", metavar="SPEC", action="append", default=[],
                help="registry-driven suites run only the reference and these specs; repeatable")
    g.addoption("--harness-quick", action="store_true",
                help="cheaper measurement settings, first suite spec per technique, skip 'slow' tests")
    g.addoption("--harness-shard", metavar="I/N", default=None,
                help="run only shard I of N (1-based) of the selected tests")
    g.addoption("--harness-markdown", metavar="PATH", default=None,
                help="write a Markdown summary of the run to PATH at the end")
    g.addoption("--harness-threads", metavar="N", default="auto",
                help="torch CPU threads per process (auto: usable cores / xdist workers; 1 is steadier "
                     "on shared machines)")


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise pytest.UsageError(f"--harness-shard {text!r}: expected I/N with integers, e.g. 1/4") from None
    if not (n >= 1 and 1 <= i <= n):
        raise pytest.UsageError(f"--harness-shard {text!r}: need 1 <= I <= N")
    return i, n


def _options(config: pytest.Config) -> Options:
    from harness.baselines import parse_fail_on
    from harness.paths import safe_component
    from harness.runner import new_run_id

    get = config.getoption
    fail_on = {}
    for text in get("harness_fail_on"):
        try:
            metric, tol = parse_fail_on(text)
        except ValueError as e:
            raise pytest.UsageError(str(e)) from None
        fail_on[metric] = tol
    wi = getattr(config, "workerinput", None)
    if wi and "harness_out" in wi:
        out, run_id = Path(wi["harness_out"]), wi["harness_run_id"]
    else:  # HARNESS_RUN_ID: set by `harness run`, so the directory name and the id agree
        run_id = os.environ.get("HARNESS_RUN_ID") or new_run_id()
        try:
            safe_component(run_id, "HARNESS_RUN_ID")
        except ValueError as e:
            raise pytest.UsageError(str(e)) from None
        out = Path(get("harness_out")) if get("harness_out") else config.rootpath / "reports" / run_id
    if get("harness_out") and not (wi and "harness_out" in wi):
        run_id = _existing_run_id(out) or run_id
    base = Path(get("harness_baselines")) if get("harness_baselines") else config.rootpath / "baselines"
    md = get("harness_markdown")
    threads = get("harness_threads")
    if threads != "auto" and not (threads.isdigit() and int(threads) >= 1):
        raise pytest.UsageError(f"--harness-threads {threads!r}: expected 'auto' or an integer >= 1")
    return Options(out=out.resolve(), run_id=run_id, baselines=base.resolve(), gate=get("harness_gate"),
                   fail_on=fail_on, strict=get("harness_strict"), device=get("harness_device"),
                   models=get("harness_model") or ["harness-tiny"], quick=get("harness_quick"),
                   shard=_parse_shard(get("harness_shard")), markdown=Path(md) if md else None,
                   threads=None if threads == "auto" else int(threads),
                   worker=str(wi.get("workerid", "main")) if wi else "main",
                   workers=int(wi.get("workercount", 1)) if wi else 1)


def _existing_run_id(out: Path) -> str | None:
    """Shards of one run share the directory (and id) when they share --harness-out."""
    from harness.runner import read_run_info

    return read_run_info(out).get("run_id") if out.is_dir() else None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped with a reason otherwise)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds (skipped by --harness-quick)")
    opts = _options(config)
    if opts.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise pytest.UsageError("--harness-device cuda: no CUDA GPU is available here "
                                    "(use --harness-device auto or cpu)")
    config.stash[SESSION] = Session(opts)
    config.stash[STARTED] = time.time()
    _terminate_as_interrupt()
    controller = None
    if not hasattr(config, "workerinput"):
        controller = _Controller(config)
        config.pluginmanager.register(controller, "harness-controller")
        if config.getoption("harness_out"):
            _write_run(config, status="running")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(controller), "harness-xdist")


def _terminate_as_interrupt() -> None:
    """SIGTERM (CI time-outs, supervisors, ``harness run`` forwarding) ends the session the
    way Ctrl-C does: pytest unwinds, records stay whole and run.json says partial."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, _frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills at once
        raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, handler)


class _XdistHooks:
    def __init__(self, controller: _Controller | None) -> None:
        self.controller = controller

    @pytest.hookimpl
    def pytest_configure_node(self, node) -> None:
        opts = node.config.stash[SESSION].opts
        node.workerinput["harness_out"] = str(opts.out)
        node.workerinput["harness_run_id"] = opts.run_id

    @pytest.hookimpl
    def pytest_xdist_node_collection_finished(self, node, ids) -> None:
        if self.controller is not None and self.controller.expected is None:
            self.controller.expected = len(ids)


def _write_run(config: pytest.Config, **fields) -> None:
    from harness.runner import write_run_info

    s = config.stash[SESSION]
    o = s.opts
    info = dict(run_id=o.run_id, started=config.stash[STARTED], profile=o.profile,
                models=o.models, baselines=str(o.baselines), device=o.device,
                shard=f"{o.shard[0]}/{o.shard[1]}" if o.shard else None,
                args=list(config.invocation_params.args), **fields)
    if fields.get("status") != "running":
        try:
            from harness.measure.environment import device_class, fingerprint

            info.update(fingerprint=fingerprint(s.device), device_class=device_class(s.device))
        except Exception as e:  # the fingerprint must never hide the run's result
            info["fingerprint_error"] = str(e)
    write_run_info(o.out, **info)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "harness_model" in metafunc.fixturenames:
        models = metafunc.config.stash[SESSION].opts.models
        metafunc.parametrize("harness_model", models, ids=models)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    opts = config.stash[SESSION].opts
    if opts.shard:
        i, n = opts.shard
        order = {nid: k for k, nid in enumerate(sorted(it.nodeid for it in items))}
        keep = [it for it in items if order[it.nodeid] % n == i - 1]
        drop = [it for it in items if order[it.nodeid] % n != i - 1]
        if drop:
            config.hook.pytest_deselected(items=drop)
        items[:] = keep
    if opts.quick:
        for it in items:
            if it.get_closest_marker("slow"):
                it.add_marker(pytest.mark.skip(reason="marked slow: skipped in --harness-quick mode"))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu"):
        s = item.config.stash[SESSION]
        if s.opts.device == "cpu":
            pytest.skip("needs a CUDA GPU; --harness-device cpu was given")
        import torch

        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA GPU: torch.cuda.is_available() is False here")


@pytest.fixture
def bench(request: pytest.FixtureRequest) -> Bench:
    """Compress, measure and record; see harness.bench.Bench."""
    b = Bench(request.config.stash[SESSION], request.node)
    request.node.stash[ITEM_BENCH] = b
    return b


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    res = yield
    b = item.stash.get(ITEM_BENCH, None)
    if b is not None and b.records:
        _gate(item, b)
    return res


def _gate(item: pytest.Item, b: Bench) -> None:
    from harness.baselines import BaselineError, verdicts

    s = b.session
    o = s.opts
    try:
        s.baselines(b.suite)
        vs = verdicts(b.records, s.store, s.device_class, overrides=o.fail_on)
    except BaselineError as e:
        if o.gating:
            pytest.fail(f"harness gate: {e}", pytrace=False)
        warnings.warn(HarnessBaselineWarning(f"baselines not used: {e}"), stacklevel=2)
        return
    if not o.gating:
        return
    gated = [v for v in vs if v.status == "regressed" and (o.gate or o.strict or v.metric in o.fail_on)]
    unknown = [v for v in vs if v.status in ("new", "missing", "incomparable-device")
               and (o.gate or o.strict or v.metric in o.fail_on)]
    problems = [v.line() for v in gated]
    if unknown:
        kinds = sorted({v.status for v in unknown})
        msg = (f"{len(unknown)} metric(s) not compared ({', '.join(kinds)}): "
               f"{unknown[0].line()}{' ...' if len(unknown) > 1 else ''}")
        if o.strict:
            problems.append(f"--harness-strict: {msg}")
        else:
            warnings.warn(HarnessBaselineWarning(msg), stacklevel=2)
    if problems:
        pytest.fail("harness gate: " + "; ".join(problems), pytrace=False)


class _Controller:
    """Hooks that only the controlling process runs (outcomes, run.json, summary)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.session = config.stash[SESSION]
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
        from harness.runner import append_jsonl

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
        _write_run(self.config, status="partial" if reason else "complete", partial_reason=reason,
                   finished=time.time(), exitstatus=int(exitstatus), tests_failed=session.testsfailed,
                   tests_collected=session.testscollected)
        if o.markdown:
            _write_markdown(self.config)

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


def _write_markdown(config: pytest.Config) -> None:
    from harness.report.markdown import render_markdown

    s = config.stash[SESSION]
    try:
        text = render_markdown(s.opts.out, baselines=s.opts.baselines)
    except ValueError as e:
        text = f"harness: no summary ({e})\n"
    path = s.opts.markdown
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")




def technique_params(quick: bool, specs: list[str] | None = None) -> list:
    """One ``pytest.param`` per suite spec of every registered technique (the reference
    first): the first spec of each technique in quick mode, all of them otherwise.
    ``specs`` (``--harness-technique``) replaces that list: the reference, then these.
    CUDA-only techniques carry the ``gpu`` marker; techniques that declare no
    ``suite_specs`` (and family modules that failed to import) appear as skipped with the
    reason, so nothing disappears silently."""
    from harness.techniques import IMPORT_ERRORS, TECHNIQUES

    if specs:
        from harness.techniques.base import make

        chosen = [make(spec) for spec in specs]  # bad spec: one-line error at collection
        return [pytest.param("none", id="none")] + [
            pytest.param(spec, id=spec, marks=[pytest.mark.gpu] if t.requires_cuda else [])
            for spec, t in zip(specs, chosen) if spec != "none"]
    params = []
    names = sorted(TECHNIQUES, key=lambda n: (n != "none", TECHNIQUES.get(n).family, n))
    for name in names:
        cls = TECHNIQUES.get(name)
        specs = list(cls.suite_specs[:1] if quick else cls.suite_specs)
        marks = [pytest.mark.gpu] if cls.requires_cuda else []
        if not specs:
            params.append(pytest.param(name, id=name, marks=[pytest.mark.skip(
                reason=f"technique {name!r} declares no suite_specs")]))
        params += [pytest.param(spec, id=spec, marks=marks) for spec in specs]
    params += [pytest.param(mod, id=mod.rsplit(".", 1)[-1], marks=[pytest.mark.skip(
        reason=f"technique module {mod} failed to import: {err}")]) for mod, err in IMPORT_ERRORS.items()]
    return params
