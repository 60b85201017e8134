"""Gating on any runner: ``harness run --against REF`` measured -> docs/results/ab.md.

    .venv/bin/python benchmarks/bench_ab.py [--jobs 3] [--repeat 2] [--full]

Every job runs in a temporary clone of this checkout (``git clone --local``, at HEAD), so the
base is a real commit and the head a real commit on top of it:

(a) ``--jobs`` A/B jobs with base == head (``--against HEAD`` on a clean clone): every
    ``regressed`` verdict is a false alarm;
(b) a commit plants a 15% slow-down in the forward of ``rtn:bits=8`` and of
    ``magnitude:sparsity=0.5`` (the suite of that commit loads ``gating_plants.py``); jobs
    against ``HEAD~1`` must flag both speed-ups ``regressed`` and never the reference;
(c) a commit plants +2% window perplexity on ``rtn:bits=8`` (must be found) and +0.2% on
    ``magnitude:sparsity=0.5`` (must never be ``regressed``);
(d) the wall time of one A/B job against one plain quick run of the same selection;
(e) with ``--sweep``, planted slow-downs of 5% and 10% too: the smallest one found in every job.

Selection: the reference, ``rtn:bits=8`` and ``magnitude:sparsity=0.5`` in the quick profile
(``--full``: the whole quick default suite, as ``bench_gating.py``'s clean runs; about four
times longer). The stored-baseline gate on the same host: ``bench_gating.py``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from _common import table, write_doc

from harness.baselines.verdicts import read_verdicts
from harness.measure.environment import device_class, fingerprint

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "results" / "ab.md"
TITLE = "# Gating on any runner: A/B against the base commit"
HARNESS = str(Path(sys.executable).parent / "harness")
SPECS = ("rtn:bits=8", "magnitude:sparsity=0.5")
SPEEDUPS = ("latency.speedup_decode", "latency.speedup_prefill")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def clone(work: Path, name: str = "clone") -> Path:
    """A clean clone of this checkout's HEAD (uncommitted changes are not part of it)."""
    repo = work / name
    shutil.rmtree(repo, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", "--local", str(ROOT), str(repo)], check=True)
    git(repo, "config", "user.email", "bench@example.invalid")
    git(repo, "config", "user.name", "bench_ab")
    return repo


def plant(repo: Path, plants: str) -> None:
    """A commit whose default suite loads the plant plugin with ``plants`` (HARNESS_PLANTS)."""
    suite = repo / "suites" / "test_default.py"
    text = suite.read_text()
    text += (f"\n\nimport os  # planted by benchmarks/bench_ab.py\nos.environ['HARNESS_PLANTS'] = {plants!r}\n"
             "pytest_plugins = ['gating_plants']\n")
    suite.write_text(text)
    git(repo, "commit", "-q", "-am", f"plant {plants}")


def job(repo: Path, out: Path, ref: str, repeat: int, full: bool) -> float:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [HARNESS, "run", "--quick", "--no-report", "--against", ref, "--repeat", str(repeat), "--out", str(out)]
    cmd += [] if full else [x for s in SPECS for x in ("--technique", s)]
    env = {**os.environ, "PYTHONPATH": str(repo / "benchmarks"),  # the plant plugin, for the head that loads it
           "HARNESS_CACHE": str(repo.parent / "cache")}  # the base worktrees, apart from the user's cache
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t0


def plain(repo: Path, out: Path, full: bool) -> float:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [HARNESS, "run", "--quick", "--no-report", "--out", str(out)]
    cmd += [] if full else [x for s in SPECS for x in ("--technique", s)]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t0


def describe(vs, spec: str, metrics: tuple[str, ...]) -> str:
    return "; ".join(f"{v.metric} {v.status} ({100 * (v.measured / v.baseline - 1):+.1f}%)"
                     for v in vs if v.spec == spec and v.metric in metrics and v.baseline and v.measured is not None)


def slow_only(work: Path, jobs: int, repeat: int, full: bool) -> int:
    """(b) alone: the 15% slow-down planted in both techniques, ``jobs`` A/B jobs, printed."""
    r = clone(work, "clone-slow-only")
    plant(r, ";".join(f"{s.split(':')[0]}:slow=0.15" for s in SPECS))
    found: Counter = Counter()
    for i in range(jobs):
        out = work / f"slow-only-{i}"
        wall = job(r, out, "HEAD~1", repeat, full)
        vs = read_verdicts(out) or []
        for spec in SPECS:
            hit = any(v.status == "regressed" for v in vs if v.spec == spec and v.metric in SPEEDUPS)
            found[spec] += hit
            print([f"slow15 --repeat {repeat} {i + 1}", spec, f"{wall:.0f} s", describe(vs, spec, SPEEDUPS),
                   "regressed" if hit else "not flagged"], flush=True)
    print({s: f"{found[s]} of {jobs}" for s in SPECS})
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--full", action="store_true", help="the whole quick default suite, not the three specs")
    ap.add_argument("--sweep", action="store_true", help="also plant 5%% and 10%% slow-downs")
    ap.add_argument("--work", default=None, help="scratch directory (default: a temporary one)")
    ap.add_argument("--slow-only", action="store_true",
                    help="only (b), printed, the page left alone (e.g. to try another --repeat)")
    a = ap.parse_args()
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="bench-ab-"))
    if a.slow_only:
        return slow_only(work, a.jobs, a.repeat, a.full)
    repo = clone(work)
    rows, counts, false_alarms, walls = [], Counter(), 0, []
    plain_wall = plain(repo, work / "plain", a.full)
    for i in range(a.jobs):  # (a) base == head
        wall = job(repo, work / f"same-{i}", "HEAD", a.repeat, a.full)
        walls.append(wall)
        vs = read_verdicts(work / f"same-{i}") or []
        c = Counter(v.status for v in vs)
        counts += c
        reg = [v for v in vs if v.status == "regressed"]
        false_alarms += len(reg)
        rows.append([f"same {i + 1}", "-", f"{wall:.0f} s", ", ".join(f"{k} {c[k]}" for k in sorted(c)),
                     "; ".join(v.line() for v in reg[:2]) or "none regressed"])
        print(rows[-1], flush=True)

    def planted(label: str, plants: str, metrics: tuple[str, ...]) -> dict[str, int]:
        r = clone(work, f"clone-{label}")
        plant(r, plants)
        hits: Counter = Counter()
        for i in range(a.jobs):
            out = work / f"{label}-{i}"
            wall = job(r, out, "HEAD~1", a.repeat, a.full)
            vs = read_verdicts(out) or []
            hits["reference flagged"] += sum(v.status == "regressed" for v in vs if v.spec == "none")
            for spec in SPECS:
                hit = any(v.status == "regressed" for v in vs if v.spec == spec and v.metric in metrics)
                hits[spec] += hit
                rows.append([f"{label} {i + 1}", spec, f"{wall:.0f} s", describe(vs, spec, metrics),
                             "regressed" if hit else "not flagged"])
                print(rows[-1], flush=True)
        return dict(hits)

    slow = {f: planted(f"slow{int(f * 100)}", ";".join(f"{s.split(':')[0]}:slow={f}" for s in SPECS), SPEEDUPS)
            for f in ((0.05, 0.10, 0.15) if a.sweep else (0.15,))}
    ppl = planted("ppl", "rtn:ppl=0.02;magnitude:ppl=0.002", ("ppl.window",))
    n, fp = a.jobs, fingerprint()
    s15 = slow[0.15]
    smallest = next((f"{int(f * 100)}%" for f in sorted(slow) if all(slow[f][s] == n for s in SPECS)), "none swept")
    ab_wall = sum(walls) / len(walls) if walls else float("nan")
    lines = [
        f"Measured by `.venv/bin/python benchmarks/bench_ab.py --jobs {n} --repeat {a.repeat}"
        f"{' --full' if a.full else ''}{' --sweep' if a.sweep else ''}` on `{device_class()}` ({fp['cpu']}, "
        f"{fp['cpu_cores']} cores, torch {fp['torch']}), quick profile, selection "
        f"{'the whole quick default suite' if a.full else 'none + ' + ' + '.join(f'`{s}`' for s in SPECS)}. "
        "Each job is `harness run --quick --against REF --repeat "
        f"{a.repeat}` in a temporary clone: {2 * a.repeat} processes in ABBA order, the head judged against the base "
        "runs by `judge_run` ([docs/guide/gating.md](../guide/gating.md)). Planted changes are a commit whose "
        "default suite loads `benchmarks/gating_plants.py`.", "",
        "## Rates", "",
        table(["check", "target", "measured"], [
            ["(a) false alarms, `--against HEAD` (base == head)", "0 regressed in total",
             f"**{false_alarms}** in {n} jobs ({sum(counts.values())} verdicts: "
             + ", ".join(f"{k} {counts[k]}" for k in sorted(counts)) + ")"],
            *[[f"(b) 15% slow-down planted in `{s}`", f"{n} of {n}", f"**{s15[s]} of {n}**"] for s in SPECS],
            ["(b) reference flagged `regressed` in the planted jobs", "never", f"**{s15['reference flagged']}**"],
            ["(c) +2% perplexity planted in `rtn:bits=8`", f"{n} of {n}", f"**{ppl['rtn:bits=8']} of {n}**"],
            ["(c) +0.2% perplexity planted in `magnitude:sparsity=0.5` flagged", f"0 of {n}",
             f"**{ppl['magnitude:sparsity=0.5']} of {n}**"],
            [f"(d) wall time of an A/B job (`--repeat {a.repeat}`) / one plain quick run", "<= 4.5x",
             f"**{ab_wall / plain_wall:.2f}x** ({ab_wall:.0f} s / {plain_wall:.0f} s)"],
            *([["(e) smallest planted slow-down found in every job", "printed", f"**{smallest}**"]] if a.sweep else []),
        ]), "",
        "## Every job", "",
        table(["job", "technique", "wall", "verdicts", "outcome"], rows), "",
    ]
    write_doc(OUT, "\n".join(lines), section="results", blank=f"{TITLE}\n\nRegenerate: "
              "`.venv/bin/python benchmarks/bench_ab.py` (about 40 minutes on 2 cores).\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
