"""``harness run --against REF`` on a temporary git repository: the base commit and the
working tree run interleaved on this host, and the head is judged against the base."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from harness import ab
from harness.baselines.verdicts import read_verdicts
from harness.cli import main

SUITE = """
import numpy as np

SPEEDUP = {speedup}  # what this commit's compressed forward buys against the reference

def _rounds(median, seed):
    return list(median * (1 + 0.01 * np.random.default_rng(seed).standard_normal(20)))

def test_reference(bench):
    ref = _rounds(10.0, 0)
    bench.record("latency.prefill_ms", float(np.median(ref)), spec="none", technique="none", n=20,
                 samples={{"values": ref}})
    bench.record("ppl.window", 50.0, spec="none", technique="none")

def test_rtn(bench):
    sp = _rounds(SPEEDUP, 1)
    bench.record("latency.speedup_prefill", float(np.median(sp)), spec="rtn:bits=8", technique="rtn", n=20,
                 samples={{"values": sp}})
"""


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path, monkeypatch):
    r = tmp_path / "repo"
    (r / "suites").mkdir(parents=True)
    _git(r, "init", "-q")
    _git(r, "config", "user.email", "t@example.invalid")
    _git(r, "config", "user.name", "t")
    (r / "suites" / "test_ab.py").write_text(SUITE.format(speedup=2.0))
    (r / ".gitignore").write_text("reports/\n__pycache__/\n")
    _git(r, "add", ".")
    _git(r, "commit", "-q", "-m", "base")
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(r)
    return r


def _against(repo: Path, out: str, *extra: str) -> int:
    return main(["run", "suites/test_ab.py", "--against", "HEAD~0" if not extra else extra[0], "--repeat", "2",
                 "--out", str(repo / out), "--no-report", "--gate", "--baselines", str(repo / "none")])


def test_a_planted_slow_down_is_found_and_an_identical_tree_passes(repo, capsys):
    assert _against(repo, "same") == 0  # base == head
    same = read_verdicts(repo / "same")
    assert {v.status for v in same} == {"pass"} and len(same) == 3
    assert sorted(p.name for p in (repo / "same").iterdir() if p.is_dir()) == ["base", "baseline", "head"]
    assert sorted(p.name for p in (repo / "same" / "base").iterdir()) == ["1", "2"]
    info = json.loads((repo / "same" / "run.json").read_text())
    assert info["baseline_source"].startswith("HEAD~0 @ ") and "same host, interleaved" in info["baseline_source"]

    # head: the compressed forward 15% slower (its speed-up 2.0 -> 1.7), not committed; the size
    # changes too, as pytest's cached bytecode is keyed by mtime and size
    (repo / "suites" / "test_ab.py").write_text(SUITE.format(speedup=1.7) + "# slower\n")
    assert _against(repo, "slow", "HEAD") == 1  # --gate fails on the regression
    vs = {v.metric: v for v in read_verdicts(repo / "slow")}
    assert vs["latency.speedup_prefill"].status == "regressed"
    assert vs["latency.speedup_prefill"].baseline == pytest.approx(2.0, rel=0.02)
    assert vs["latency.prefill_ms"].status == "pass"  # the reference did not move: the host did not
    out = capsys.readouterr().out
    assert "head judged against HEAD @" in out
    order = [line.split(":")[1].split()[0] for line in out.splitlines()
             if line.startswith("harness run: ") and (" base " in line or " head " in line) and "(" in line]
    assert order == ["base", "head", "head", "base"] * 2  # ABBA, in both A/B invocations


@pytest.mark.parametrize("ref,cwd,match", [("nope", "repo", "'nope' is not a commit"),
                                           ("HEAD", "plain", "needs a git checkout")])
def test_bad_ref_and_non_git_directories_are_one_line_and_leave_nothing(repo, tmp_path, monkeypatch, capsys,
                                                                      ref, cwd, match):
    if cwd == "plain":
        (tmp_path / "plain").mkdir()
        monkeypatch.chdir(tmp_path / "plain")
    out = tmp_path / "out"
    assert main(["run", str(repo / "suites" / "test_ab.py"), "--against", ref, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1 and not out.exists()
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.py"))


def test_a_dirty_worktree_cache_is_refused(repo, capsys):
    base = ab.checkout(repo, "HEAD")
    (base.tree / "suites" / "test_ab.py").write_text("# edited by hand\n")
    with pytest.raises(ab.AgainstError, match="is dirty or not at"):
        ab.checkout(repo, "HEAD")
    assert ab.order(3) == [("base", 1), ("head", 1), ("head", 2), ("base", 2), ("base", 3), ("head", 3)]


def test_first_run_on_a_new_runner_class_starts_its_baseline(repo, tmp_path, capsys):
    """A runner class no baseline knows: `harness run --repeat N`, then `harness baseline update
    OUT.repeats/*`; the file appears beside the others and the next run there is judged."""
    from harness.measure.environment import device_class

    bl = tmp_path / "bl"
    (bl / "ab").mkdir(parents=True)
    (bl / "ab" / "cpu-some-other-host.json").write_text(json.dumps(
        {"schema": "harness-baseline/2", "suite": "ab", "device_class": "cpu-some-other-host", "entries": []}))
    first = repo / "first"
    assert main(["run", "suites/test_ab.py", "--repeat", "2", "--out", str(first), "--no-report",
                 "--baselines", str(bl)]) == 0
    assert {v.status for v in read_verdicts(first)} == {"not-comparable"}  # only another class has a baseline
    assert "harness baseline update OUT.repeats/*" in capsys.readouterr().out
    repeats = sorted(str(p) for p in (repo / "first.repeats").iterdir())
    assert main(["baseline", "update", *repeats, "--baselines", str(bl)]) == 0
    assert sorted(p.name for p in (bl / "ab").iterdir()) == sorted(
        ["cpu-some-other-host.json", f"{device_class('cpu')}.json"])
    nxt = repo / "next"
    assert main(["run", "suites/test_ab.py", "--out", str(nxt), "--no-report", "--baselines", str(bl)]) == 0
    assert {v.status for v in read_verdicts(nxt)} <= {"pass", "inconclusive"}


def test_a_test_only_one_side_has_is_new_or_missing(repo):
    text = SUITE.format(speedup=2.0).replace("def test_rtn(bench):", "def test_rtn_renamed(bench):").replace(
        'spec="rtn:bits=8"', 'spec="rtn:bits=4"')
    (repo / "suites" / "test_ab.py").write_text(text + "# head: rtn:bits=8 gone, rtn:bits=4 new\n")
    assert main(["run", "suites/test_ab.py", "--against", "HEAD", "--out", str(repo / "o"), "--no-report",
                 "--baselines", str(repo / "none")]) == 0
    by = {(v.spec, v.metric): v.status for v in read_verdicts(repo / "o")}
    assert by[("rtn:bits=4", "latency.speedup_prefill")] == "new"
    assert by[("rtn:bits=8", "latency.speedup_prefill")] == "missing"
    assert by[("none", "ppl.window")] == "pass"


def test_a_stale_worktree_cache_entry_is_made_again(repo, tmp_path):
    """A cached worktree whose repository was removed or cloned anew (its git link is dead) is
    not someone's work: it is made again; a worktree with edits is refused (above)."""
    import shutil

    base = ab.checkout(repo, "HEAD")
    shutil.rmtree(repo / ".git" / "worktrees")  # as after the repository was cloned anew at this path
    again = ab.checkout(repo, "HEAD")
    assert again.tree == base.tree and _git(again.tree, "rev-parse", "HEAD") == base.sha
