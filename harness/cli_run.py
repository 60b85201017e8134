"""CLI subcommands for runs: ``run``, ``report``, ``compare``, ``baseline``, ``leaderboard``.

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
        for k in ("out", "device", "baselines"):
            setattr(a, k, getattr(b, k) or getattr(a, k))
        a.model = a.model + b.model
        a.technique = a.technique + b.technique
        a.reports = b.reports if b.reports != "reports" else a.reports
        suites = [runner.resolve_suite(s) for s in (b.suites or ["default"])]
        _check_names(a.model, a.technique)  # one line and exit 2 before pytest or a run directory
        run_id = rundir.new_run_id()
        run_dir = Path(a.out) if a.out else Path(a.reports) / run_id
        extra = [f"--harness-model={m}" for m in a.model] + [f"--harness-technique={t}" for t in a.technique]
        extra += [f"--harness-device={a.device}"] if a.device else []
        extra += ["--harness-gate"] if a.gate else []
        extra += [f"--harness-baselines={a.baselines}"] if a.baselines else []
        md = run_dir / "summary.md"
        cmd = runner.pytest_command(suites, run_dir, quick=a.quick,
                                    extra=extra + [f"--harness-markdown={md}"] + pytest_args)
        print(f"harness run: {' '.join(cmd[1:])}", flush=True)
        code, signum = runner.run_pytest(cmd, run_id=None if a.out else run_id)
        if signum is not None:
            return _after_signal(run_dir, signum, a)
        if code == 5:
            print("harness run: error: pytest selected no tests (exit 5); check the suite path and -k/-m "
                  "filters", file=sys.stderr)
            return 5
        from harness.records import record_files

        if not record_files(run_dir):
            print(f"harness run: error: no records were written to {run_dir} (pytest exit {code})",
                  file=sys.stderr)
            return code or 2
        if not a.no_report:
            from harness.report.html import write_report

            path = write_report(run_dir, baselines=a.baselines)
            print(f"harness run: report {path}")
        status, why = rundir.run_status(run_dir)
        if status != "complete":
            print(f"harness run: warning: partial run: {why}", file=sys.stderr)
        print(f"harness run: records {run_dir}  (pytest exit {code})")
        return code

    p.set_defaults(handler=run)


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
        from harness.report.html import write_report

        try:
            print(f"harness run: report {write_report(run_dir, baselines=a.baselines)} (partial)")
        except (ValueError, OSError) as e:
            print(f"harness run: warning: no report: {str(e).splitlines()[0]}", file=sys.stderr)
    return 128 + signum


@command("report", "render the HTML report (and optionally Markdown) of a run directory")
def _report_cmd(p: argparse.ArgumentParser) -> None:
    p.epilog = ("examples:\n  harness report reports/20261123-071502-3f9a\n"
                "  harness report RUN_DIR -o out.html --markdown summary.md\n"
                "  harness report RUN_DIR --markdown          Markdown to stdout (CI logs)\n")
    p.add_argument("run_dir")
    p.add_argument("-o", "--output", default=None, help="HTML file (default: RUN_DIR/report.html)")
    p.add_argument("--markdown", nargs="?", const="-", default=None, metavar="PATH",
                   help="also write the Markdown summary to PATH (or stdout)")
    p.add_argument("--baselines", default=None, help="baselines root for verdicts (default: the run's)")
    _skip_option(p)

    def run(a: argparse.Namespace) -> int:
        from harness.report.html import write_html
        from harness.report.markdown import markdown_from
        from harness.report.summary import summarize

        s = summarize(a.run_dir, a.baselines, skip_bad_lines=a.skip_bad_lines)  # records read once
        for msg in s.skipped:
            print(f"warning: {msg}", file=sys.stderr)
        path = write_html(s, a.output)
        if a.markdown == "-":
            print(markdown_from(s))
        elif a.markdown:
            Path(a.markdown).write_text(markdown_from(s), encoding="utf-8")
            print(f"markdown {a.markdown}", file=sys.stderr)
        print(f"report {path}", file=sys.stderr if a.markdown == "-" else sys.stdout)
        return 0

    p.set_defaults(handler=run)


@command("compare", "compare two runs metric by metric (A = baseline, B = candidate)")
def _compare_cmd(p: argparse.ArgumentParser) -> None:
    p.epilog = "examples:\n  harness compare reports/RUN_A reports/RUN_B --html compare.html\n"
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.add_argument("--metrics", default=None, help="comma-separated metrics to show")
    p.add_argument("--html", default=None, help="also write an HTML comparison here")
    p.add_argument("--fail-on-regression", action="store_true", help="exit 1 if B regressed")
    _skip_option(p)

    def run(a: argparse.Namespace) -> int:
        from harness.metrics import METRICS
        from harness.report.compare import compare_runs, delta_lines, write_compare_html

        metrics = [m.strip() for m in a.metrics.split(",")] if a.metrics else None
        for m in metrics or []:
            METRICS.get(m)
        deltas, warnings = compare_runs(a.run_a, a.run_b, metrics, skip_bad_lines=a.skip_bad_lines)
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        print("\n".join(delta_lines(deltas)))
        if a.html:
            print(f"html {write_compare_html(a.run_a, a.run_b, deltas, warnings, a.html)}")
        bad = any(d.verdict and d.verdict.status == "regressed" for d in deltas)
        return 1 if bad and a.fail_on_regression else 0

    p.set_defaults(handler=run)


@command("baseline", "update, show or check stored baselines (baselines/<suite>/<device-class>.json)")
def _baseline_cmd(p: argparse.ArgumentParser) -> None:
    p.epilog = ("examples:\n  harness baseline update reports/RUN_ID      write baselines from a run; "
                "review with git diff\n  harness baseline check reports/RUN_ID       verdicts, exit 1 on "
                "regression\n  harness baseline show\n"
                "  harness baseline migrate                    rewrite schema-1 files as schema 2\n")
    p.add_argument("action", choices=["update", "show", "check", "migrate"])
    p.add_argument("run_dir", nargs="?")
    p.add_argument("--baselines", default="baselines", help="baselines root (default: baselines)")
    p.add_argument("--prune", action="store_true", help="update: drop entries the run did not measure")
    p.add_argument("--allow-partial", action="store_true", help="update: accept a partial run")
    _skip_option(p)

    def run(a: argparse.Namespace) -> int:
        from harness import baselines as bl
        from harness.records import load_records
        from harness.rundir import read_run_info, run_status

        if a.action == "migrate":
            done = bl.migrate(a.baselines)
            for path, n in done:
                print(f"migrated {path}: {n} entries to {bl.SCHEMA} (specs resolved with today's defaults)")
            print("nothing to migrate" if not done else "review the change with: git diff -- " + a.baselines)
            return 0
        if a.action == "show":
            root = Path(a.baselines)
            files = sorted(root.glob("*/*.json"))
            if not files:
                raise UsageError(f"no baseline files under {root}/<suite>/<device-class>.json")
            for f in files:
                b = bl.load_baseline(f)
                n = sum(len(e.metrics) for e in b.entries.values())
                print(f"{f}: suite {b.suite}, {b.device_class}, {len(b.entries)} entries, {n} metrics")
            return 0
        if not a.run_dir:
            raise UsageError(f"'harness baseline {a.action}' needs RUN_DIR")
        records = load_records(a.run_dir, skip_bad_lines=a.skip_bad_lines)
        for msg in records.skipped:
            print(f"warning: {msg}", file=sys.stderr)
        if a.action == "update":
            status, why = run_status(a.run_dir)
            if status != "complete" and not a.allow_partial:
                raise UsageError(f"{a.run_dir} is a partial run ({why}); pass --allow-partial to use it")
            rid = read_run_info(a.run_dir).get("run_id", Path(a.run_dir).name)
            for path, n, kept in bl.update(records, a.baselines, prune=a.prune, run_id=rid):
                print(f"wrote {path}: {n} entries from {rid}" + (f", {kept} kept" if kept else ""))
            print("review the change with: git diff -- " + a.baselines)
            return 0
        from harness.report.summary import run_verdicts

        vs = run_verdicts(records, a.baselines)
        for v in vs:
            if v.status != "pass":
                print(f"{v.status:20} {v.line()}")
        counts = {s: sum(v.status == s for v in vs) for s in bl.VERDICTS}
        print("verdicts: " + ", ".join(f"{k} {n}" for k, n in counts.items() if n))
        return 1 if counts["regressed"] else 0

    p.set_defaults(handler=run)


@command("leaderboard", "ingest runs into a SQLite history and rank model x technique")
def _leaderboard_cmd(p: argparse.ArgumentParser) -> None:
    p.epilog = ("examples:\n  harness leaderboard                         ingest reports/*/ and rank\n"
                "  harness leaderboard reports/RUN --metric latency.decode_tok_s --html lb.html\n"
                "  harness leaderboard --db nightly.sqlite --no-ingest\n")
    p.add_argument("run_dirs", nargs="*", help="run directories to ingest (default: every reports/*/ run)")
    p.add_argument("--db", default=None, help="SQLite file (default: reports/leaderboard.sqlite)")
    p.add_argument("--metric", default="ppl.window", help="metric to rank by (default: ppl.window)")
    p.add_argument("--device-class", default=None, help="only this device class")
    p.add_argument("--html", default=None, help="write the leaderboard HTML here")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--no-ingest", action="store_true", help="rank what the database already holds")
    _skip_option(p)

    def run(a: argparse.Namespace) -> int:
        from harness import leaderboard as lb
        from harness.metrics import METRICS
        from harness.records import record_files

        METRICS.get(a.metric)
        db = Path(a.db) if a.db else lb.DEFAULT_DB
        con = lb.connect(db)
        if not a.no_ingest:
            dirs = a.run_dirs or [str(d) for d in sorted(Path("reports").glob("*/")) if record_files(d)]
            if not dirs:
                raise UsageError("no run directories to ingest (give RUN_DIR or run `harness run` first)")
            for d in dirs:
                skipped: list[str] = []
                print(f"ingested {d}: {lb.ingest(con, d, skip_bad_lines=a.skip_bad_lines, skipped=skipped)} "
                      f"results", file=sys.stderr)
                for msg in skipped:
                    print(f"warning: {msg}", file=sys.stderr)
        items = lb.entries(con, a.device_class)
        if not items:
            raise UsageError(f"{db} holds no results" + (f" for {a.device_class}" if a.device_class else ""))
        for dc in sorted({e.device_class for e in items}):
            group = [e for e in items if e.device_class == dc]
            print(f"\n{dc}: by {a.metric}")
            for i, e in enumerate(lb.rank(group, a.metric)[: a.top], 1):
                v = e.metrics.get(a.metric)
                print(f"  {i:3} {e.model:16} {e.spec + ' [' + e.profile + ']':44} "
                      f"{'N/A' if v is None else f'{v:.5g}':>10}")
            print(f"{dc}: by cost-efficiency score")
            for i, e in enumerate(lb.rank(group)[: a.top], 1):
                s = "N/A" if e.score is None else f"{e.score:.4g}"
                print(f"  {i:3} {e.model:16} {e.spec + ' [' + e.profile + ']':44} {s:>10}  {e.score_note}")
        if a.html:
            from harness.report.leaderboard_html import write_html

            print(f"html {write_html(con, a.html, a.metric, a.device_class)}")
        print(f"database {db}", file=sys.stderr)
        return 0

    p.set_defaults(handler=run)
