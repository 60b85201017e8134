"""Search section of docs/results/pipelines.md (issue 15): a budgeted ``harness search`` on
harness-tiny against every single-technique point of the default suite (quick profile),
its chart, and an interrupted + resumed search against an uninterrupted one (same seed,
same trial count). ``run(quick) -> str`` returns the Markdown; ``benchmarks/bench_pipelines.py
--section search`` puts it into docs/results/pipelines.md, or run this file alone:

    .venv/bin/python benchmarks/pipelines_search.py --quick            # a few minutes
    .venv/bin/python benchmarks/pipelines_search.py --out /tmp/s.md    # the 20-minute search

Every figure is measured by the run it reports; searches run through the CLI, as a user
would, in run directories under reports/.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from _common import table, write_doc

ROOT = Path(__file__).resolve().parents[1]
PNG = ROOT / "docs" / "results" / "pipelines-search.png"
HARNESS = [sys.executable, "-c", "import sys; from harness.cli import main; sys.exit(main(sys.argv[1:]))"]
ENV = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}


def _cli(args: list[str], log: Path) -> tuple[int, float]:
    t0 = time.perf_counter()
    with open(log, "a") as fh:
        code = subprocess.call(HARNESS + args, cwd=ROOT, env=ENV, stdout=fh, stderr=subprocess.STDOUT)
    return code, time.perf_counter() - t0


def suite_run(quick: bool) -> Path:
    """The newest complete quick-profile default-suite run on harness-tiny under reports/ (``quick``: or
    one still running, for development), or a new one."""
    for d in sorted((ROOT / "reports").glob("*/run.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        info = json.loads(d.read_text())
        args = " ".join(info.get("args") or [])
        if ((info.get("status") == "complete" or quick) and info.get("profile") == "quick" and "harness-tiny" in
                (info.get("models") or []) and "--harness-technique" not in args and "search" not in args
                and "suites/test_default.py" in args and " -p " not in f" {args} "):
            return d.parent
    out = ROOT / "reports" / f"suite-quick-{time.strftime('%Y%m%d-%H%M%S')}"
    _cli(["run", "--quick", "--out", str(out), "--no-report"], out.with_suffix(".log"))
    return out


def suite_points(run_dir: Path) -> list[dict]:
    from harness.report.summary import summarize

    s = summarize(run_dir)
    return [{"spec": r.spec, "size": r.value("size.bytes"), "ppl": r.value("ppl.window"), "storage": r.storage,
             "simulated": r.simulated, "reference": r.technique == "none"}
            for r in s.rows if r.model == "harness-tiny" and r.value("size.bytes") and r.value("ppl.window")]


def search_points(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(every fully measured point, the frontier) of a search run."""
    from harness.search.store import read_points

    pts = [{"spec": p.spec, "size": p.values.get("size.bytes"), "ppl": p.values.get("ppl.window"),
            "fidelity": p.fidelity} for p in read_points(run_dir)]
    front = json.loads((run_dir / "frontier.json").read_text())["frontier"]
    return pts, [{"spec": r["search_spec"], "size": r["values"]["size.bytes"], "ppl": r["values"]["ppl.window"],
                  "from": "reference" if r["reference"] else "seed" if r["seed_spec"] else f"trial {r['trial']}"}
                 for r in front]


def _covered(p: dict, front: list[dict]) -> tuple[str, dict | None]:
    """How the frontier answers one suite point: a frontier point no larger and no worse."""
    tol = 1 + 1e-6  # perplexity of one spec agrees to ~1e-7 across thread counts, not bit for bit
    best = [f for f in front if f["size"] <= p["size"] and f["ppl"] <= p["ppl"] * tol]
    if not best:
        return "NOT covered", None
    f = min(best, key=lambda f: (f["size"], f["ppl"]))
    same = f["size"] == p["size"] and abs(f["ppl"] - p["ppl"]) <= 1e-6 * p["ppl"]
    return ("matched" if same else "dominated"), f


def chart(suite: list[dict], pts: list[dict], front: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.6), dpi=120)
    full = [p for p in pts if p["fidelity"] == "full" and p["size"] and p["ppl"]]
    ax.scatter([p["size"] / 1e6 for p in full], [p["ppl"] for p in full], s=14, c="#9ecae1", label="search points")
    real = [p for p in suite if not p["reference"]]
    ax.scatter([p["size"] / 1e6 for p in real], [p["ppl"] for p in real], s=30, marker="s", facecolors="none",
               edgecolors="#333", label="default suite (quick), single techniques")
    ref = [p for p in suite if p["reference"]]
    ax.scatter([p["size"] / 1e6 for p in ref], [p["ppl"] for p in ref], marker="*", s=160, c="black", label="fp32")
    fx = sorted(front, key=lambda f: f["size"])
    ax.step([f["size"] / 1e6 for f in fx], [f["ppl"] for f in fx], where="post", c="#c0392b", lw=1.5)
    ax.scatter([f["size"] / 1e6 for f in fx], [f["ppl"] for f in fx], s=40, c="#c0392b", zorder=4,
               label="search frontier")
    from matplotlib.ticker import ScalarFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(ScalarFormatter())
    ax.tick_params(axis="x", which="minor", labelsize=6)
    ref_ppl = ref[0]["ppl"] if ref else min(f["ppl"] for f in front)
    top = max(1.15 * ref_ppl, 1.03 * max(f["ppl"] for f in front))  # broken points would flatten the rest
    lows = [p["ppl"] for p in full + suite + front if p["ppl"]]
    ax.set_ylim(0.995 * min(lows), top)
    above = sum(p["ppl"] > top for p in full + real)
    ax.set_xlabel("serialized size (MB), log scale")
    ax.set_ylabel("perplexity (window protocol, 8192 tokens)")
    if above:
        ax.text(0.99, 0.98, f"{above} point(s) above {top:.0f} not shown", transform=ax.transAxes, ha="right",
                va="top", fontsize=7, color="#555")
    ax.set_title("harness search on harness-tiny: frontier vs the default suite")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    PNG.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PNG)
    plt.close(fig)


RESUME_SPACE = Path(__file__).resolve().with_name("search_resume_space.yaml")


def resume_check(trials: int, stop_after: int, tag: str) -> dict:
    """The same seeded search twice: once straight through, once interrupted (SIGINT after
    ``stop_after`` points) and resumed. Returns both frontiers and the measure counts."""
    base = ROOT / "reports" / f"search-resume-{tag}"
    whole, cut = base.with_name(base.name + "-whole"), base.with_name(base.name + "-cut")
    args = ["search", "--model", "harness-tiny", "--space", str(RESUME_SPACE), "--trials", str(trials), "--seed", "7",
            "--no-report"]
    _, t_whole = _cli(args + ["--out", str(whole)], whole.with_suffix(".log"))
    t0 = time.perf_counter()
    log = open(cut.with_suffix(".log"), "a")
    proc = subprocess.Popen(HARNESS + args + ["--out", str(cut)], cwd=ROOT, env=ENV, stdout=log,
                            stderr=subprocess.STDOUT)
    points = cut / "search" / "points.jsonl"
    while proc.poll() is None and (not points.is_file() or len(points.read_text().splitlines()) < stop_after + 1):
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    first_code = proc.wait()
    before = len(points.read_text().splitlines())
    second_code, t_resume = _cli(["search", "--resume", str(cut), "--no-report"], cut.with_suffix(".log"))
    after = [json.loads(x)["spec"] for x in points.read_text().splitlines()]
    fw = [(r["search_spec"], r["values"]) for r in json.loads((whole / "frontier.json").read_text())["frontier"]]
    fc = [(r["search_spec"], r["values"]) for r in json.loads((cut / "frontier.json").read_text())["frontier"]]
    pw = {(x["spec"], json.dumps(x["values"], sort_keys=True)) for x in map(json.loads, (whole / "search" / "points.jsonl")
                                                                            .read_text().splitlines())}
    pc = {(x["spec"], json.dumps(x["values"], sort_keys=True)) for x in map(json.loads, points.read_text().splitlines())}
    return {"whole": fw, "cut": fc, "equal": fw == fc, "points_equal": pw == pc, "first_code": first_code, "second_code": second_code,
            "points_before": before, "points_after": len(after), "duplicates": len(after) - len(set(after)),
            "t_whole": t_whole, "t_cut": time.perf_counter() - t0 - t_resume, "t_resume": t_resume,
            "dirs": (whole, cut)}


def run(quick: bool, reuse: Path | None = None) -> str:
    """The section's Markdown. ``reuse``: a finished search run directory to report instead of
    running the budgeted search again (its measured figures; wall time = its search time)."""
    t_start = time.perf_counter()
    suite_dir = suite_run(quick)
    suite = suite_points(suite_dir)
    budget = "4m" if quick else "20m"
    out = reuse or ROOT / "reports" / f"search-bench-{'quick' if quick else 'full'}-{time.strftime('%Y%m%d-%H%M%S')}"
    if reuse is None:
        code, t_search = _cli(["search", "--model", "harness-tiny", "--budget", budget, "--seed", "0", "--out",
                               str(out)], out.with_suffix(".log"))
    else:
        code, t_search = 0, json.loads((out / "search.json").read_text())["spent_s"]
    pts, front = search_points(out)
    state = json.loads((out / "search.json").read_text())
    chart(suite, pts, front)
    rows, missed = [], 0
    for p in sorted(suite, key=lambda p: p["size"]):
        how, f = _covered(p, front)
        missed += how == "NOT covered"
        rows.append([f"`{p['spec']}`" + (" (simulated)" if p["simulated"] else ""), f"{p['size'] / 1e6:.3f}",
                     f"{p['ppl']:.3f}", how, f"`{f['spec']}` ({f['size'] / 1e6:.3f} MB, {f['ppl']:.3f})" if f else "-"])
    n_trials = 6 if quick else 16
    rc = resume_check(n_trials, 3 if quick else 6, "quick" if quick else "full")
    ref = json.loads((out / "frontier.json").read_text())["reference"]
    suite_ref = next((p for p in suite if p["reference"]), None)
    fp = json.loads((out / "run.json").read_text()).get("fingerprint") or {}
    full = [p for p in pts if p["fidelity"] == "full"]
    md = [
        f"Search: `harness search --model harness-tiny --budget {budget} --seed 0` (objectives size.bytes, "
        f"ppl.window; the packaged default space: {', '.join(_space_names())}). Exit code {code}; "
        f"{state['trials_done']} trials in {state['spent_s']:.0f} s of search time ({t_search:.0f} s wall "
        f"with model load and report), {len(pts)} points ({len(full)} measured in full, "
        f"{sum(p['fidelity'] == 'proxy' for p in pts)} screened out by the proxy, "
        f"{sum(p['fidelity'] == 'error' for p in pts)} refused). Run directory `{out.relative_to(ROOT)}`.",
        "",
        "Frontier (`harness search --show`):",
        "",
        table(["#", "spec", "size MB", "ppl.window", "from"],
              [[i, f"`{f['spec']}`", f"{f['size'] / 1e6:.3f}", f"{f['ppl']:.3f}", f["from"]]
               for i, f in enumerate(front, 1)]),
        "",
        f"Every single-technique point of the default suite (quick profile, run `{suite_dir.name}`, same "
        f"perplexity protocol: 8192 validation tokens in 128-token windows, same 16 calibration windows) "
        f"against the frontier: **{len(suite) - missed} of {len(suite)} dominated or matched**"
        + (f", {missed} not covered" if missed else "") + ". Protocol check: the uncompressed reference "
        f"measures ppl {ref['ppl.window']:.4f}, {ref['size.bytes'] / 1e6:.3f} MB in the search and "
        + (f"ppl {suite_ref['ppl']:.4f}, {suite_ref['size'] / 1e6:.3f} MB in the suite run." if suite_ref else
           "was not in the suite run."),
        "",
        table(["suite point", "size MB", "ppl", "frontier", "by"], rows),
        "",
        f"![search frontier vs the default suite]({PNG.name})",
        "",
        f"Interrupted and resumed: `harness search --space benchmarks/{RESUME_SPACE.name} --trials {n_trials} "
        f"--seed 7` run straight through "
        f"({rc['t_whole']:.0f} s), and the same command stopped with SIGINT after {rc['points_before']} points "
        f"(exit {rc['first_code']}, {rc['t_cut']:.0f} s) then `harness search --resume` (exit "
        f"{rc['second_code']}, {rc['t_resume']:.0f} s): {rc['points_after']} points, "
        f"{rc['duplicates']} measured twice; frontiers **{'identical' if rc['equal'] else 'DIFFERENT'}** "
        f"({len(rc['whole'])} points, specs and values), and the sets of evaluated points "
        f"{'identical' if rc['points_equal'] else 'DIFFERENT'} too.",
        "",
        f"Wall times measured on {fp.get('cpu', '?')}, {os.cpu_count()} cores, "
        f"OMP_NUM_THREADS={ENV['OMP_NUM_THREADS']}, on a machine shared with other jobs (timings are "
        f"indicative; sizes and perplexities are exact and deterministic). Section total "
        f"{time.perf_counter() - t_start:.0f} s.",
    ]
    return "\n".join(md) + "\n"


def _space_names() -> list[str]:
    from harness.search.space import load_space

    return [e.name for e in load_space().entries]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None, help="write the Markdown here (default: stdout)")
    ap.add_argument("--reuse", default=None, metavar="RUN_DIR", help="report this finished search run instead of "
                    "running the budgeted search again")
    a = ap.parse_args()
    text = run(a.quick, Path(a.reuse).resolve() if a.reuse else None)
    if a.out:
        write_doc(a.out, text)
    print(text)
