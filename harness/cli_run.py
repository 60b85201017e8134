"""CLI subcommand ``run`` (baselines: ``harness.cli_baseline``; history: ``harness.cli_history``;
reading finished runs: ``harness.cli_reports``).

Imported by ``harness.cli`` (EXTENSIONS); each ``@command`` setup adds its arguments and
sets ``handler``. Bad input raises ValueError -> one line on stderr, exit 2.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from harness.cli import UsageError, command

RUN_EXAMPLES = textwrap.dedent("""\
    examples:
      harness run --quick                         default suite, quick profile (what `make run` does)
      harness run                                 default suite, every suite spec of every technique
      harness run default -- -k "rtn or none" -x  pass anything after -- to pytest
      harness run --gate                          fail on regressions against baselines/
      harness run suites/test_mine.py -- -n 2     your own suite file, 2 xdist workers
      harness run --quick --shard 1/2 --out s1    one job of a 2-way CI matrix (then harness merge)
      harness run --quick --against origin/main --repeat 2 --gate   A/B against the base commit on this host
    """)


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="quick profile (--harness-quick)")
    p.add_argument("--out", default=None, help="run directory (default: REPORTS/<run-id>)")
    p.add_argument("--reports", default="reports", help="where run directories go (default: reports)")
    p.add_argument("--model", action="append", default=[], help="model name or local HF dir (repeatable)")
    p.add_argument("--technique", action="append", default=[], metavar="SPEC",
                   help="run only these technique specs (and the reference) in the default suite (repeatable)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    p.add_argument("--gate", action="store_true", help="fail tests that regress against baselines")
    p.add_argument("--baselines", default=None, help="baselines root (default: ./baselines)")
    p.add_argument("--no-report", action="store_true", help="skip rendering report.html")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="run shard I of N of the collected tests (balanced by recorded test times)")
    p.add_argument("--durations", default=None, metavar="PATH",
                   help="test times for --shard: JSON file or run directory (default: .harness-durations.json)")
    p.add_argument("--executor", choices=["pytest", "ray"], default=None,
                   help="pytest (default: one pytest process here) or ray (each cell a Ray task; extra 'cluster')")
    p.add_argument("--address", default=None, metavar="auto|HOST:PORT",
                   help="--executor ray: an existing Ray cluster (default: start a local one)")
    p.add_argument("--ray-cpus", type=int, default=None, metavar="N",
                   help="--executor ray without --address: CPUs of the local Ray (default: all)")
    p.add_argument("--against", default=None, metavar="REF",
                   help="also run the suite at git REF (origin/main, or $(git merge-base origin/main HEAD)) on this "
                        "host, interleaved ABBA with the working tree (--repeat N runs each side N times), and judge "
                        "the working tree against it: speed verdicts on any runner")
    p.add_argument("--repeat", type=int, default=None, metavar="N",
                   help="run the suite N times, each in its own process (OUT.repeats/1..N), merged into OUT: "
                        "verdicts judge each metric's median run, with the run-to-run noise divided by N (asv's "
                        "'processes'); for timings a single run leaves 'inconclusive: only repeated runs narrow'")


@command("run", "run a suite with pytest, write reports/<run-id>/ and its HTML report")
def _run_cmd(p: argparse.ArgumentParser) -> None:
    p.epilog = RUN_EXAMPLES
    _run_options(p)
    p.add_argument("args", nargs=argparse.REMAINDER,
                   help="suite names or files (default: default), then -- and pytest arguments")

    def run(a: argparse.Namespace) -> int:
        from harness import rundir, runner

        rest = list(a.args)
        if "--" in rest:
            i = rest.index("--")
            rest, pytest_args = rest[:i], rest[i + 1:]
        else:
            pytest_args = []
        second = argparse.ArgumentParser(prog="harness run", add_help=False)
        _run_options(second)
        second.add_argument("suites", nargs="*")
        try:
            b, unknown = second.parse_known_args(rest)
        except SystemExit:
            raise UsageError(f"bad arguments {' '.join(rest)!r}; see harness run --help") from None
        if unknown:
            raise UsageError(f"unknown argument {unknown[0]!r}; pytest arguments go after --, "
                             f"e.g. harness run -- {unknown[0]}")
        for k in ("quick", "gate", "no_report"):
            setattr(a, k, getattr(a, k) or getattr(b, k))
        for k in ("out", "device", "baselines", "shard", "durations", "executor", "address", "ray_cpus", "repeat",
                  "against"):
            setattr(a, k, getattr(b, k) if getattr(b, k) is not None else getattr(a, k))
        a.model = a.model + b.model
        a.technique = a.technique + b.technique
        a.reports = b.reports if b.reports != "reports" else a.reports
        suites = [runner.resolve_suite(s) for s in (b.suites or ["default"])]
        _check_names(a.model, a.technique)  # one line and exit 2 before pytest or a run directory
        run_id = rundir.new_run_id()
        run_dir = Path(a.out) if a.out else Path(a.reports) / run_id
        if a.out and any(run_dir.glob("records-*.jsonl")):  # records are appended: two runs would mix
            raise UsageError(f"--out {a.out!r} already holds a run's records; a second run there would be judged "
                             "and reported together with it: choose a new directory or remove that one")
        extra = [f"--harness-model={m}" for m in a.model] + [f"--harness-technique={t}" for t in a.technique]
        extra += [f"--harness-device={a.device}"] if a.device else []
        extra += ["--harness-gate"] if a.gate else []
        extra += [f"--harness-baselines={a.baselines}"] if a.baselines else []
        if a.shard:
            from harness.shard import parse_shard

            parse_shard(a.shard)  # 3/2, 0/0: one line, exit 2, before pytest starts
            extra.append(f"--harness-shard={a.shard}")
        if a.durations:
            from harness.shard import load_durations

            load_durations(a.durations)
            extra.append(f"--harness-durations={a.durations}")
        if a.repeat is not None and a.repeat < 1:
            raise UsageError(f"--repeat {a.repeat} must be >= 1")
        if a.against:
            if a.executor == "ray" or a.shard:
                raise UsageError("--against runs both trees here, interleaved; it does not combine with --shard "
                                 "or --executor ray")
            return _run_against(a, suites, extra, pytest_args, run_dir)
        if (a.repeat or 1) > 1:
            if a.executor == "ray" or a.shard:
                raise UsageError("--repeat runs the whole suite N times in this process tree; it does not combine "
                                 "with --shard or --executor ray (merge their runs with harness merge)")
            return _run_repeats(a, suites, extra, pytest_args, run_dir)
        if a.executor == "ray":
            code = _run_ray(a, suites, extra, pytest_args, run_id, run_dir)
            return code if code == 5 else _finish(run_dir, code, a)
        if a.address or a.ray_cpus:
            raise UsageError("--address and --ray-cpus apply only with --executor ray")
        md = run_dir / "summary.md"
        cmd = runner.pytest_command(suites, run_dir, quick=a.quick,
                                    extra=extra + [f"--harness-markdown={md}"] + pytest_args)
        print(f"harness run: {' '.join(cmd[1:])}", flush=True)
        code, stop = _pytest(cmd, run_dir, a, run_id=None if a.out else run_id)
        return code if stop else _finish(run_dir, code, a)

    p.set_defaults(handler=run)


def _pytest(cmd: list[str], run_dir: Path, a: argparse.Namespace, run_id: str | None = None,
            tree: Path | None = None) -> tuple[int, bool]:
    """One pytest child (in ``tree``, importing its code first, when given): (exit code,
    whether ``harness run`` ends with it now: after a signal, or when pytest selected no
    tests, which must never pass silently)."""
    from harness import ab, runner

    where = {"cwd": tree, "env": ab.child_env(tree)} if tree else {}
    code, signum = runner.run_pytest(cmd, run_id=run_id, **where)
    if signum is not None:
        return _after_signal(run_dir, signum, a), True
    if code == 5:
        print("harness run: error: pytest selected no tests (exit 5); check the suite path and -k/-m "
              "filters", file=sys.stderr)
        return 5, True
    return code, False


def _run_repeats(a: argparse.Namespace, suites: list[str], extra: list[str], pytest_args: list[str],
                 run_dir: Path) -> int:
    """``--repeat N``: N complete runs, each its own pytest process and run directory under
    ``OUT.repeats/``, then merged into OUT (``harness.merge``), whose verdicts combine them
    (``harness.baselines.store.combine_runs``). ``--gate`` gates the merged run, not each repeat:
    one noisy repeat must not fail the job that the median would pass."""
    from harness import runner
    from harness.baselines.verdicts import GatePolicy, gate, run_verdicts
    from harness.merge import merge_runs
    from harness.report.summary import summary_lines

    parts = run_dir.parent / f"{run_dir.name}.repeats"
    if parts.exists() or (run_dir.exists() and any(run_dir.iterdir())):
        raise UsageError(f"{run_dir} or {parts} already exists; --repeat needs a new run directory")
    if run_dir.is_dir():
        run_dir.rmdir()  # an empty --out: merge writes the directory whole
    inner = [x for x in extra if x != "--harness-gate"]
    dirs, worst = [], 0
    for k in range(1, a.repeat + 1):
        d = parts / str(k)
        cmd = runner.pytest_command(suites, d, quick=a.quick,
                                    extra=inner + [f"--harness-markdown={d / 'summary.md'}"] + pytest_args)
        print(f"harness run: repeat {k}/{a.repeat}: {' '.join(cmd[1:])}", flush=True)
        code, stop = _pytest(cmd, d, a)
        if stop:
            return code
        worst = max(worst, code)
        dirs.append(d)
    try:
        res = merge_runs(run_dir, dirs)
    except ValueError as e:
        raise UsageError(f"cannot merge the repeats: {e}") from None
    for w in res.warnings:
        print(f"harness run: warning: {w}", file=sys.stderr)
    print(f"harness run: {a.repeat} repeats merged into {run_dir} ({res.records} records)")
    vs = run_verdicts(run_dir, a.baselines, write=True)  # the merged run judged once, into verdicts.jsonl
    for line in summary_lines(run_dir, vs):
        print(line)
    if a.gate:
        bad, _ = gate(vs, GatePolicy(gate=True))
        for line in bad:
            print(f"harness gate: {line}", file=sys.stderr)
        worst = max(worst, 1 if bad else 0)
    return _finish(run_dir, worst, a, vs)


def _run_against(a: argparse.Namespace, suites: list[str], extra: list[str], pytest_args: list[str],
                 run_dir: Path) -> int:
    """``--against REF``: REF's worktree and this checkout run in ABBA order (``harness.ab``),
    each run in ``OUT/base/K`` or ``OUT/head/K``; the head's runs merge into OUT and are
    judged against the base's; ``--gate`` gates on that."""
    from harness import ab, runner
    from harness.baselines.verdicts import GatePolicy, gate
    from harness.merge import merge_runs
    from harness.report.summary import summary_lines

    if run_dir.exists() and any(run_dir.iterdir()):
        raise UsageError(f"{run_dir} already exists; --against needs a new run directory")
    base = ab.checkout(ab.toplevel(Path.cwd()), a.against)  # bad ref or dirty cache: before anything is written
    if note := ab.lock_note(base):
        print(f"harness run: warning: {note}", file=sys.stderr)
    inner, dirs, worst = [x for x in extra if x != "--harness-gate"], {ab.BASE: [], ab.HEAD: []}, 0
    for side, k in ab.order(a.repeat or 1):
        tree, d = base.tree if side == ab.BASE else base.top, run_dir / side / str(k)
        cmd = runner.pytest_command([ab.in_tree(s, base.top, tree) for s in suites], d, quick=a.quick,
                                    extra=inner + ["-p", "no:cacheprovider"] + pytest_args)
        print(f"harness run: {side} {k} ({base.sha[:12] if side == ab.BASE else 'working tree'}): "
              f"{' '.join(cmd[1:])}", flush=True)
        code, stop = _pytest(cmd, d, a, tree=tree)
        if stop:
            return code
        worst = max(worst, code)
        dirs[side].append(d)
    tmp = run_dir.parent / f".{run_dir.name}.head-merge"
    merge_runs(tmp, dirs[ab.HEAD])
    for item in tmp.iterdir():
        item.rename(run_dir / item.name)
    tmp.rmdir()
    vs = ab.judge_against(run_dir, dirs[ab.BASE], base)
    print(f"harness run: head judged against {base.label}")
    for line in summary_lines(run_dir, vs):
        print(line)
    bad, _ = gate(vs, GatePolicy(gate=True)) if a.gate else ([], [])
    for line in bad:
        print(f"harness gate: {line}", file=sys.stderr)
    return _finish(run_dir, max(worst, 1 if bad else 0), a, vs)


def _finish(run_dir: Path, code: int, a: argparse.Namespace, verdicts: list | None = None) -> int:
    """After the run: refuse a run without records, render the report with the run's
    verdicts (those it wrote, unless given), warn if partial."""
    from harness import rundir
    from harness.records import record_files

    if not record_files(run_dir):
        print(f"harness run: error: no records were written to {run_dir} (pytest exit {code})",
              file=sys.stderr)
        return code or 2
    if not a.no_report:
        from harness.baselines.verdicts import run_verdicts
        from harness.report.html import write_report

        vs = verdicts if verdicts is not None else run_verdicts(run_dir, a.baselines)
        path = write_report(run_dir, verdicts=vs)
        print(f"harness run: report {path}")
    status, why = rundir.run_status(run_dir)
    if status != "complete":
        print(f"harness run: warning: partial run: {why}", file=sys.stderr)
    print(f"harness run: records {run_dir}  (pytest exit {code})")
    return code


def _run_ray(a: argparse.Namespace, suites: list[str], extra: list[str], pytest_args: list[str], run_id: str,
             run_dir: Path) -> int:
    """Collect here, run each cell as a Ray task, gather into ``run_dir``."""
    import time

    from harness import executor_ray as ex
    from harness.rundir import write_run_info

    if a.shard:
        raise UsageError("--shard and --executor ray do not combine: Ray spreads the cells itself")
    suites = [str(Path(s).resolve()) if Path(s).exists() else s for s in suites]
    args = extra + (["--harness-quick"] if a.quick else [])
    ray = ex.connect(a.address, a.ray_cpus)
    cells = ex.collect(suites, args, pytest_args)
    if not cells:
        print("harness run: error: pytest selected no tests; check the suite path and -k/-m filters",
              file=sys.stderr)
        return 5
    gpu = a.device == "cuda" or (a.device in (None, "auto") and ray.cluster_resources().get("GPU", 0) > 0)
    args += ["--harness-threads=1"] + (["--harness-device=cuda"] if gpu else [])
    print(f"harness run: {len(cells)} cells as Ray tasks ({'1 GPU' if gpu else '1 CPU'} each) on "
          f"{a.address or 'a local Ray'}", flush=True)
    write_run_info(run_dir, run_id=run_id, status="running", started=time.time(), executor="ray",
                   address=a.address or "local", args=["harness", "run", "--executor", "ray", *suites, *args])
    results = ex.run_cells(ray, cells, args, run_id, gpu=gpu, root=str(Path.cwd()))
    status, reason = ex.write_results(run_dir, results)
    for r in results:
        if r.error:
            print(f"harness run: cell lost: {r.nodeid}: {r.error}", file=sys.stderr)
    return 0 if status == "complete" and all(r.exit_code == 0 for r in results) else 1


def _skip_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--skip-bad-lines", action="store_true",
                   help="skip damaged lines inside records files (reported) instead of failing")


def _check_names(models: list[str], techniques: list[str]) -> None:
    """Bad --model / --technique values fail here, not once per test inside pytest."""
    if not models and not techniques:
        return
    import harness
    from harness.models.zoo import check_model_name

    for m in models:
        check_model_name(m)
    for t in techniques:
        harness.make(t)


def _after_signal(run_dir: Path, signum: int, a: argparse.Namespace) -> int:
    """SIGINT/SIGTERM: the child has stopped; keep what it wrote, mark the run partial,
    render the report of what exists, exit 128 + signal (130 / 143)."""
    import signal

    from harness import rundir
    from harness.records import record_files

    name = signal.Signals(signum).name
    rundir.mark_interrupted(run_dir, signum)
    print(f"harness run: {name}: stopped; the run is partial", file=sys.stderr)
    if record_files(run_dir) and not a.no_report:
        from harness.baselines.verdicts import run_verdicts
        from harness.report.html import write_report

        try:
            path = write_report(run_dir, verdicts=run_verdicts(run_dir, a.baselines))
            print(f"harness run: report {path} (partial)")
        except (ValueError, OSError) as e:
            print(f"harness run: warning: no report: {str(e).splitlines()[0]}", file=sys.stderr)
    return 128 + signum
