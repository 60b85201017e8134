"""pytest plugin (entry point ``pytest11: harness``): options and hooks only. The options
become ``harness.options.Options`` (validated once); the state behind the hooks is
``harness.session`` (caches, run directory, per-test gate) and ``harness.controller`` (the
run's verdicts and summaries); the ``bench`` fixture's API is ``harness.bench.Bench``; the
default suite's parameters are ``harness.suite``.

Inert for test sessions that never use ``bench``: nothing is written unless a test
records something or ``--harness-out`` is given. Under pytest-xdist the controller picks
the run id and directory and hands them to the workers; each worker writes its own
``records-<worker>.jsonl``; the controller writes ``outcomes-*.jsonl`` and ``run.json``
and merges records for the summary.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from harness.bench import Bench
from harness.controller import Controller
from harness.options import EvalOptions, Options
from harness.session import HarnessBaselineWarning, Session

SESSION = pytest.StashKey[Session]()
ITEM_BENCH = pytest.StashKey[Bench]()


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
                help="run only shard I of N (1-based) of the selected tests, balanced by recorded test times")
    g.addoption("--harness-durations", metavar="PATH", default=None,
                help="test times for --harness-shard: a JSON file (test id -> s) or a run directory "
                     "(default: .harness-durations.json in the rootdir if present, else split by count)")
    g.addoption("--harness-markdown", metavar="PATH", default=None,
                help="write a Markdown summary of the run to PATH at the end")
    g.addoption("--harness-threads", metavar="N", default="auto",
                help="torch CPU threads per process (auto: usable cores / xdist workers; 1 is steadier "
                     "on shared machines)")
    g.addoption("--harness-max-tokens", metavar="N", type=int, default=None,
                help="score at most N tokens in the perplexity/fidelity protocols (>= the 128-token window)")
    g.addoption("--harness-split", choices=["validation", "test", "train"], default=None,
                help="bundled split the perplexity protocols score (default: validation)")
    g.addoption("--harness-text", metavar="FILE", default=None, help="score this UTF-8 text instead of a split")
    g.addoption("--harness-calibration-text", metavar="FILE", default=None,
                help="draw calibration windows from this UTF-8 text instead of the train split")
    g.addoption("--harness-lm-eval-tasks", metavar="NAME,...", default=None,
                help="also measure these lm-eval tasks' acc/acc_norm offline (e.g. harness_cloze, bundled)")


def _eval_options(get) -> EvalOptions:
    """--harness-max-tokens/-split/-text/-calibration-text/-lm-eval-tasks, checked now."""
    from harness.options import EvalOptions

    try:
        return EvalOptions(max_tokens=get("harness_max_tokens"), split=get("harness_split"),
                           text=get("harness_text"), calibration_text=get("harness_calibration_text"),
                           lm_eval_tasks=EvalOptions.tasks_of(get("harness_lm_eval_tasks")))
    except ValueError as e:
        raise pytest.UsageError(f"--harness-*: {e}") from None


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    from harness.shard import parse_shard

    try:
        return parse_shard(text)
    except ValueError as e:
        raise pytest.UsageError(f"--harness-{e}") from None


def _durations(config: pytest.Config) -> dict[str, float]:
    """Recorded test times for a balanced shard split: --harness-durations, else the
    checkout's .harness-durations.json, else none (split by count)."""
    from harness.shard import DURATIONS_FILE, load_durations

    given = config.getoption("harness_durations")
    path = Path(given) if given else config.rootpath / DURATIONS_FILE
    if not given and not path.is_file():
        return {}
    try:
        return load_durations(path)
    except ValueError as e:
        raise pytest.UsageError(f"--harness-durations: {e}") from None


def _options(config: pytest.Config) -> Options:
    from harness.baselines.store import parse_fail_on
    from harness.options import parse_threads
    from harness.paths import safe_component
    from harness.rundir import new_run_id

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
    try:
        threads = parse_threads(get("harness_threads"))
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None
    return Options(out=out.resolve(), run_id=run_id, baselines=base.resolve(), gate=get("harness_gate"),
                   fail_on=fail_on, strict=get("harness_strict"), device=get("harness_device"),
                   models=tuple(get("harness_model") or ["harness-tiny"]), quick=get("harness_quick"),
                   shard=_parse_shard(get("harness_shard")), markdown=Path(md) if md else None,
                   threads=threads, eval=_eval_options(get),
                   worker=str(wi.get("workerid", "main")) if wi else "main",
                   workers=int(wi.get("workercount", 1)) if wi else 1)


def _existing_run_id(out: Path) -> str | None:
    """Shards of one run share the directory (and id) when they share --harness-out."""
    from harness.rundir import read_run_info

    return read_run_info(out).get("run_id") if out.is_dir() else None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped with a reason otherwise)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds (skipped by --harness-quick)")
    opts = _options(config)
    if opts.worker != "main" and opts.device != "cpu":  # xdist worker: one GPU each, before CUDA starts
        from harness.measure import environment

        environment.pin_worker_gpu(opts.worker)
    if opts.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise pytest.UsageError("--harness-device cuda: no CUDA GPU is available here "
                                    "(use --harness-device auto or cpu)")
    config.stash[SESSION] = Session(opts, list(config.invocation_params.args))
    _terminate_as_interrupt()
    controller = None
    if not hasattr(config, "workerinput"):
        controller = Controller(config.stash[SESSION])
        config.pluginmanager.register(controller, "harness-controller")
        if config.getoption("harness_out"):
            config.stash[SESSION].writer.run_info(status="running")
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
    def __init__(self, controller: Controller | None) -> None:
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


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "harness_model" in metafunc.fixturenames:
        models = metafunc.config.stash[SESSION].opts.models
        metafunc.parametrize("harness_model", models, ids=models)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    opts = config.stash[SESSION].opts
    if opts.shard:
        from harness.shard import select

        mine = select([it.nodeid for it in items], opts.shard, _durations(config))
        keep = [it for it in items if it.nodeid in mine]
        drop = [it for it in items if it.nodeid not in mine]
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
        problems, warns = b.session.gate(b.records)
        for w in warns:
            warnings.warn(HarnessBaselineWarning(w), stacklevel=2)
        if problems:
            pytest.fail("harness gate: " + "; ".join(problems), pytrace=False)
    return res
