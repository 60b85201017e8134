"""CLI subcommands over the nightly history: ``leaderboard`` (rank, with shared ranks inside
the noise) and ``history`` (detected steps per series, explained).

Imported by ``harness.cli`` (EXTENSIONS). Bad input raises ValueError -> one line, exit 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.cli import UsageError, command
from harness.cli_run import _skip_option


def _db_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="*", help="run directories to ingest (default: every reports/*/ run)")
    p.add_argument("--db", default=None, help="SQLite file (default: reports/leaderboard.sqlite)")
    p.add_argument("--device-class", default=None, help="only this device class")
    p.add_argument("--no-ingest", action="store_true", help="use what the database already holds")
    _skip_option(p)


def _open(a: argparse.Namespace):
    """The history database, with ``a.run_dirs`` (default: every reports/*/ run) ingested."""
    from harness import leaderboard as lb
    from harness.records import record_files

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
    return con, db


@command("leaderboard", "ingest runs into a SQLite history and rank model x technique")
def _leaderboard_cmd(p: argparse.ArgumentParser) -> None:
    p.epilog = ("examples:\n  harness leaderboard                         ingest reports/*/ and rank\n"
                "  harness leaderboard reports/RUN --metric latency.decode_tok_s --html lb.html\n"
                "  harness leaderboard --db nightly.sqlite --no-ingest\n")
    _db_options(p)
    p.add_argument("--metric", default="ppl.window", help="metric to rank by (default: ppl.window)")
    p.add_argument("--html", default=None, help="write the leaderboard HTML here (with trend charts)")
    p.add_argument("--top", type=int, default=20)

    def run(a: argparse.Namespace) -> int:
        from harness import leaderboard as lb
        from harness.metrics import METRICS

        METRICS.get(a.metric)
        con, db = _open(a)
        items = lb.entries(con, a.device_class)
        if not items:
            raise UsageError(f"{db} holds no results" + (f" for {a.device_class}" if a.device_class else ""))
        for dc in sorted({e.device_class for e in items}):
            group = [e for e in items if e.device_class == dc]
            print(f"\n{dc}: by {a.metric} (equal ranks: the difference is inside its 95% interval)")
            for e in lb.rank(group, a.metric)[: a.top]:
                v = e.metrics.get(a.metric)
                print(f"  {e.rank or '-':>3} {e.model:16} {e.spec + ' [' + e.profile + ']':44} "
                      f"{'N/A' if v is None else f'{v:.5g}':>10}")
            print(f"{dc}: by cost-efficiency score")
            for e in lb.rank(group)[: a.top]:
                s = "N/A" if e.score is None else f"{e.score:.4g}"
                print(f"  {e.rank:3} {e.model:16} {e.spec + ' [' + e.profile + ']':44} {s:>10}  {e.score_note}")
        if a.html:
            from harness.report.leaderboard_html import write_html

            print(f"html {write_html(con, a.html, a.metric, a.device_class)}")
        print(f"database {db}", file=sys.stderr)
        return 0

    p.set_defaults(handler=run)


@command("history", "detected steps (change points) in every model x technique x metric series over runs")
def _history_cmd(p: argparse.ArgumentParser) -> None:
    p.epilog = ("examples:\n  harness history                             ingest reports/*/ and list steps\n"
                "  harness history --db nightly.sqlite --no-ingest --metric latency.speedup_decode\n"
                "method: PELT change points over each series, kept when the level moved by more than the "
                "metric's tolerance (docs/results/gating.md)\n")
    _db_options(p)
    p.add_argument("--metric", default=None, help="only this metric (default: every metric)")

    def run(a: argparse.Namespace) -> int:
        from harness import leaderboard as lb
        from harness.metrics import METRICS

        if a.metric:
            METRICS.get(a.metric)
        con, db = _open(a)
        n_runs = con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        found = lb.steps(con, a.device_class, a.metric)
        for s in found:
            print(s.line())
        print(f"{len(found)} step(s) in {n_runs} run(s) of {db}" +
              ("" if n_runs >= 4 else " (a series needs >= 4 runs to detect a step)"))
        return 0

    p.set_defaults(handler=run)
