"""CLI subcommands that read finished runs: ``report``, ``compare``, ``merge``, ``durations``.

Each accepts several run directories (shards of one CI matrix, or one suite run on several
machines); ``harness.merge`` checks that they belong together and de-duplicates their
records. Imported by ``harness.cli`` (EXTENSIONS). Bad input raises ValueError -> one line
on stderr, exit 2.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from harness.cli import UsageError, command


def _skip_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--skip-bad-lines", action="store_true",
                   help="skip damaged lines inside records files (reported) instead of failing")


def _dirs(text: str) -> list[str]:
    """``DIR`` or ``DIR,DIR,...`` (a comma inside an existing directory's name is kept)."""
    return [text] if Path(text).exists() or "," not in text else [d for d in text.split(",") if d]


@command("report", "render the HTML report (and optionally Markdown) of one or more run directories")
def _report_cmd(p: argparse.ArgumentParser) -> None:
    p.epilog = ("examples:\n  harness report reports/20261123-071502-3f9a\n"
                "  harness report RUN_DIR -o out.html --markdown summary.md\n"
                "  harness report RUN_DIR --markdown          Markdown to stdout (CI logs)\n"
                "  harness report shard1/ shard2/ -o all.html  several runs as one (merged on the fly)\n"
                "  harness report --by device_class gpu-a/ gpu-b/   same cells side by side per device class\n")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("-o", "--output", default=None,
                   help="HTML file (default: RUN_DIR/report.html; required with several RUN_DIRs)")
    p.add_argument("--markdown", nargs="?", const="-", default=None, metavar="PATH",
                   help="also write the Markdown summary to PATH (or stdout)")
    p.add_argument("--baselines", default=None, help="baselines root for verdicts (default: the run's)")
    p.add_argument("--by", choices=["device_class"], default=None,
                   help="device_class: a side-by-side table per device class (text/Markdown), no verdicts")
    _skip_option(p)

    def run(a: argparse.Namespace) -> int:
        if a.by:
            return _by_device(a)
        if len(a.run_dirs) > 1 and not a.output:
            raise UsageError(f"{len(a.run_dirs)} run directories: give -o OUT.html for the combined report "
                             f"(or merge them first: harness merge OUT DIR...)")
        if len(a.run_dirs) == 1:
            return _report(a, a.run_dirs[0])
        from harness.merge import merge_runs

        with tempfile.TemporaryDirectory(prefix="harness-report-") as tmp:
            res = merge_runs(Path(tmp) / "merged", a.run_dirs, skip_bad_lines=a.skip_bad_lines)
            for w in res.warnings:
                print(f"warning: {w}", file=sys.stderr)
            return _report(a, res.out)

    p.set_defaults(handler=run)


def _report(a: argparse.Namespace, run_dir: str | Path) -> int:
    from harness.baselines.verdicts import run_verdicts
    from harness.report.html import write_html
    from harness.report.markdown import markdown_from
    from harness.report.summary import summarize

    vs = run_verdicts(run_dir, a.baselines, skip_bad_lines=a.skip_bad_lines)  # stored, or judged now
    s = summarize(run_dir, vs, skip_bad_lines=a.skip_bad_lines)
    for msg in s.skipped:
        print(f"warning: {msg}", file=sys.stderr)
    classes = sorted({r.device_class for r in s.records if r.device_class})
    if len(classes) > 1:
        print(f"warning: records of {len(classes)} device classes ({', '.join(classes)}): the table holds one "
              f"figure per cell; harness report --by device_class shows them side by side", file=sys.stderr)
    path = write_html(s, a.output)
    if a.markdown == "-":
        print(markdown_from(s))
    elif a.markdown:
        Path(a.markdown).write_text(markdown_from(s), encoding="utf-8")
        print(f"markdown {a.markdown}", file=sys.stderr)
    print(f"report {path}", file=sys.stderr if a.markdown == "-" else sys.stdout)
    return 0


def _by_device(a: argparse.Namespace) -> int:
    from harness.report.compare import by_device_lines, by_device_markdown, load_by_device

    table, warnings = load_by_device(a.run_dirs, skip_bad_lines=a.skip_bad_lines)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    if a.markdown and a.markdown != "-":
        Path(a.markdown).write_text(by_device_markdown(table), encoding="utf-8")
        print(f"markdown {a.markdown}", file=sys.stderr)
    print(by_device_markdown(table) if a.markdown == "-" else "\n".join(by_device_lines(table)))
    return 0


@command("compare", "compare two runs metric by metric (A = baseline, B = candidate)")
def _compare_cmd(p: argparse.ArgumentParser) -> None:
    p.epilog = ("examples:\n  harness compare reports/RUN_A reports/RUN_B --html compare.html\n"
                "  harness compare base-s1,base-s2 new-s1,new-s2   each side several run directories\n"
                "  runs of different device classes: one column per class, no verdicts across classes\n")
    p.add_argument("run_a", help="run directory, or DIR,DIR,... taken as one run")
    p.add_argument("run_b", help="run directory, or DIR,DIR,... taken as one run")
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
        from harness.baselines.verdicts import judge_runs

        vs = judge_runs(_dirs(a.run_a), _dirs(a.run_b), skip_bad_lines=a.skip_bad_lines)
        deltas, warnings = compare_runs(_dirs(a.run_a), _dirs(a.run_b), metrics, verdicts=vs,
                                        skip_bad_lines=a.skip_bad_lines)
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        print("\n".join(delta_lines(deltas)))
        if a.html:
            print(f"html {write_compare_html(a.run_a, a.run_b, deltas, warnings, a.html)}")
        bad = any(d.verdict and d.verdict.status == "regressed" for d in deltas)
        return 1 if bad and a.fail_on_regression else 0

    p.set_defaults(handler=run)


@command("merge", "combine run directories (CI shards, several machines) into one run directory")
def _merge_cmd(p: argparse.ArgumentParser) -> None:
    p.epilog = ("examples:\n  harness merge reports/all shard-1/ shard-2/ && harness report reports/all\n"
                "  harness merge reports/all shard-*/ --overwrite   replace an earlier merge\n")
    p.add_argument("out", metavar="OUT", help="new run directory to write")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it is a harness run directory")
    _skip_option(p)

    def run(a: argparse.Namespace) -> int:
        from harness.merge import merge_runs

        res = merge_runs(a.out, a.run_dirs, overwrite=a.overwrite, skip_bad_lines=a.skip_bad_lines)
        for w in res.warnings:
            print(f"warning: {w}", file=sys.stderr)
        if res.status != "complete":
            print(f"warning: partial run: {res.partial_reason}", file=sys.stderr)
        print(f"merged {len(a.run_dirs)} run directories into {res.out}: {res.records} records"
              + (f" ({res.duplicates} duplicates dropped)" if res.duplicates else "") + f", {res.status}")
        return 0

    p.set_defaults(handler=run)


@command("durations", "write test times of earlier runs for a balanced --shard split")
def _durations_cmd(p: argparse.ArgumentParser) -> None:
    p.epilog = ("examples:\n  harness durations reports/RUN_ID            writes .harness-durations.json "
                "(commit it: every shard job must see the same file)\n")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("-o", "--output", default=None, help="file to write (default: ./.harness-durations.json)")

    def run(a: argparse.Namespace) -> int:
        from harness.shard import DURATIONS_FILE, durations_from_runs, write_durations

        for d in a.run_dirs:
            if not Path(d).is_dir():
                raise UsageError(f"run directory {d!r} does not exist")
        found = durations_from_runs(a.run_dirs)
        if not found:
            raise UsageError(f"no test times in {', '.join(a.run_dirs)} (no outcomes-*.jsonl with call times)")
        path = write_durations(a.output or DURATIONS_FILE, found)
        print(f"durations {path}: {len(found)} tests, {sum(found.values()):.1f} s in all")
        return 0

    p.set_defaults(handler=run)
