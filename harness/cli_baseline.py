"""CLI subcommand ``baseline``: update, check, show and migrate stored baselines.

Several run directories of one host are repeats: ``update`` keeps every run's value (the
run-to-run noise verdicts allow for), ``check`` judges their median run. Imported by
``harness.cli`` (EXTENSIONS). Bad input raises UsageError -> one line on stderr, exit 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from harness.cli import UsageError, command
from harness.cli_run import _skip_option


def _load_runs(a: argparse.Namespace, partial_ok: bool = False) -> tuple[list, list[str], dict | None]:
    """(records, run ids, fingerprint) of ``a.run_dirs``: every run complete (unless
    ``--allow-partial``, or ``partial_ok``, which warns) and from one host (fingerprints
    equal in the comparability fields), else one line and exit 2. Several runs are repeats:
    verdicts and baselines take each metric's median run and learn the run-to-run noise from
    the others."""
    from harness.baselines.judge import fingerprint_diff
    from harness.records import load_records
    from harness.rundir import read_run_info, run_status

    records, ids, fp0 = [], [], None
    for d in a.run_dirs:
        status, why = run_status(d)
        if status != "complete" and not a.allow_partial:
            if not partial_ok:
                raise UsageError(f"{d} is a partial run ({why}); pass --allow-partial to use it")
            print(f"warning: {d} is a partial run ({why}): judged on what it measured", file=sys.stderr)
        info = read_run_info(d)
        fp = info.get("fingerprint")
        diff = fingerprint_diff(fp, fp0)  # [] while either side has none
        if diff:
            raise UsageError(f"{d} ran on another host than {a.run_dirs[0]} ({'; '.join(diff)}): repeats of a "
                             "run must come from one host")
        fp0 = fp0 or fp
        rid = info.get("run_id", Path(d).name)
        if rid in ids:
            raise UsageError(f"{d}: run {rid} is given twice")
        ids.append(rid)
        loaded = load_records(d, skip_bad_lines=a.skip_bad_lines)
        for msg in loaded.skipped:
            print(f"warning: {msg}", file=sys.stderr)
        records += [r if r.run_id else dataclasses.replace(r, run_id=rid) for r in loaded]
    return records, ids, fp0


def _update(a: argparse.Namespace) -> int:
    """``harness baseline update RUN [RUN ...]``."""
    from harness.baselines.store import update

    records, ids, fp0 = _load_runs(a)
    label = "+".join(ids)
    for path, n, kept in update(records, a.baselines, prune=a.prune, run_id=label, fingerprint=fp0):
        print(f"wrote {path}: {n} entries from {label}" + (f", {kept} kept" if kept else ""))
    print("review the change with: git diff -- " + a.baselines)
    return 0


def _check(a: argparse.Namespace) -> int:
    """``harness baseline check RUN [RUN ...]``: verdicts, exit 1 on a regression. Several
    runs of one host are judged as one (each metric's median run; the run-to-run noise
    divided by the runs)."""
    from harness.baselines.store import BaselineStore
    from harness.baselines.verdicts import VERDICTS, GatePolicy, gate, judge_run, run_verdicts
    from harness.rundir import read_reference

    records, _, fp = _load_runs(a, partial_ok=True)
    if len(a.run_dirs) == 1:  # the verdicts the run wrote, while the baselines are unchanged
        vs = run_verdicts(a.run_dirs[0], a.baselines, skip_bad_lines=a.skip_bad_lines)
    else:
        vs = judge_run(records, BaselineStore(a.baselines), fingerprint=fp,
                       reference=[r for d in a.run_dirs for r in read_reference(d)])
    for v in vs:
        if v.status != "pass":
            print(f"{v.status:20} {v.line()}")
    counts = {s: sum(v.status == s for v in vs) for s in VERDICTS}
    print("verdicts: " + ", ".join(f"{k} {n}" for k, n in counts.items() if n))
    return 1 if gate(vs, GatePolicy(gate=True))[0] else 0


@command("baseline", "update, show or check stored baselines (baselines/<suite>/<device-class>.json)")
def _baseline_cmd(p: argparse.ArgumentParser) -> None:
    p.epilog = ("examples:\n  harness baseline update reports/RUN_ID      write baselines from a run; "
                "review with git diff\n  harness baseline update reports/R1 reports/R2 reports/R3   from 3 runs: "
                "verdicts then allow for the run-to-run noise\n"
                "  harness baseline check reports/RUN_ID       verdicts, exit 1 on regression\n"
                "  harness baseline check reports/R1 reports/R2 reports/R3   repeats judged as one: the median "
                "run, the run-to-run noise divided by the runs\n"
                "  harness baseline show\n"
                "  harness baseline migrate                    rewrite schema-1 files as schema 2\n")
    p.add_argument("action", choices=["update", "show", "check", "migrate"])
    p.add_argument("run_dirs", nargs="*", metavar="RUN_DIR",
                   help="one or more runs of one host (several: update keeps every run's value, and verdicts "
                        "learn the run-to-run noise from them; check judges their median run, with that noise "
                        "divided by the runs)")
    p.add_argument("--baselines", default="baselines", help="baselines root (default: baselines)")
    p.add_argument("--prune", action="store_true", help="update: drop entries the run did not measure")
    p.add_argument("--allow-partial", action="store_true", help="update: accept a partial run")
    _skip_option(p)

    def run(a: argparse.Namespace) -> int:
        from harness.baselines.file import SCHEMA, load_baseline
        from harness.baselines.store import migrate

        if a.action == "migrate":
            done = migrate(a.baselines)
            for path, n in done:
                print(f"migrated {path}: {n} entries to {SCHEMA} (specs resolved with today's defaults)")
            print("nothing to migrate" if not done else "review the change with: git diff -- " + a.baselines)
            return 0
        if a.action == "show":
            root = Path(a.baselines)
            files = sorted(root.glob("*/*.json"))
            if not files:
                raise UsageError(f"no baseline files under {root}/<suite>/<device-class>.json")
            for f in files:
                b = load_baseline(f)
                n = sum(len(e.metrics) for e in b.entries.values())
                print(f"{f}: suite {b.suite}, {b.device_class}, {len(b.entries)} entries, {n} metrics")
            return 0
        if not a.run_dirs:
            raise UsageError(f"'harness baseline {a.action}' needs RUN_DIR")
        return _update(a) if a.action == "update" else _check(a)

    p.set_defaults(handler=run)
