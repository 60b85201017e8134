"""harness merge: de-duplication, compatibility checks, partial shards, safe OUT, speed."""
from __future__ import annotations

import json
import shutil
import time

import pytest

from harness.merge import load_many, merge_runs
from harness.records import Record, RecordWriter, load_records
from harness.rundir import load_outcomes, read_run_info, run_status, write_run_info

pytest_plugins = ["pytester"]

SPECS = ["none", "rtn:bits=4", "rtn:bits=8", "nf4:group=64"]
METRICS = ["ppl.window", "size.bytes", "latency.prefill_ms", "memory.peak_rss_mb"]


def shard_dir(path, i=None, n=None, specs=SPECS, suite="default", version="0.1.0", status="complete",
              dc="cpu-test-2c", repeat=1, profile="quick"):
    recs = []
    for k in range(repeat):
        for spec in specs:
            ctx = dict(model="tiny", spec=spec, technique=spec.split(":")[0], suite=suite, device_class=dc,
                       run_id=path.name, test_id=f"suites/test_{suite}.py::test_technique[{spec}-{k}]",
                       extra={"profile": profile})
            recs += [Record(m, 1.0 + len(spec) + j, **ctx) for j, m in enumerate(METRICS)]
    RecordWriter(path, worker=f"shard{i}of{n}-main" if i else "main").write(recs)
    tag = f"shard{i}of{n}" if i else "main"
    (path / f"outcomes-{tag}.jsonl").write_text("".join(
        json.dumps({"nodeid": f"suites/test_{suite}.py::test_technique[{s}]", "when": "call", "outcome": "passed",
                    "duration": 1.0}) + "\n" for s in specs))
    write_run_info(path, run_id=path.name, status=status, profile=profile, shard=f"{i}/{n}" if i else None,
                   harness_version=version, fingerprint={"cpu": path.name, "harness": version}, device_class=dc,
                   started=1.0, finished=2.0, **({"partial_reason": "killed"} if status == "partial" else {}))
    return path


def keys(records):
    return sorted((r.model, r.spec, r.metric) for r in records)


def test_merge_of_two_shards_equals_the_whole_and_keeps_each_fingerprint(tmp_path):
    whole = shard_dir(tmp_path / "whole")
    s1 = shard_dir(tmp_path / "s1", 1, 2, specs=SPECS[:2])
    s2 = shard_dir(tmp_path / "s2", 2, 2, specs=SPECS[2:])
    res = merge_runs(tmp_path / "out", [s1, s2, s1])  # a shard given twice counts once
    merged = load_records(tmp_path / "out")
    assert keys(merged) == keys(load_records(whole)) and len(merged) == len({r.record_id for r in merged})
    assert res.records == len(merged) and res.duplicates == len(load_records(s1)) and res.status == "complete"
    assert "shard 1/2 given more than once" in res.warnings
    info = read_run_info(tmp_path / "out")
    assert info["status"] == "complete" and info["suites"] == ["default"] and info["harness_version"] == "0.1.0"
    assert [m["fingerprint"]["cpu"] for m in info["merged_from"]] == ["s1", "s2", "s1"]
    assert "fingerprint" not in info  # the sources differ: each keeps its own, none is invented
    assert len(load_outcomes(tmp_path / "out")) == 4
    assert not list(tmp_path.glob(".out.*"))  # no temporary left behind


def test_partial_shard_or_missing_shard_makes_a_partial_merge(tmp_path):
    s1 = shard_dir(tmp_path / "s1", 1, 3, specs=SPECS[:1])
    s2 = shard_dir(tmp_path / "s2", 2, 3, specs=SPECS[1:2], status="partial")
    res = merge_runs(tmp_path / "out", [s1, s2])
    assert res.status == "partial" and "shard(s) 3/3 missing" in res.partial_reason and "s2 is partial" in \
        res.partial_reason
    assert run_status(tmp_path / "out")[0] == "partial"


@pytest.mark.parametrize("kw, msg", [
    (dict(version="0.2.0"), "different harness versions"),
    (dict(suite="mine"), "different suites"),
    (dict(profile="full"), "different profiles"),
])
def test_incompatible_runs_are_refused_with_one_line(tmp_path, kw, msg):
    a = shard_dir(tmp_path / "a")
    b = shard_dir(tmp_path / "b", **kw)
    for call in (lambda: merge_runs(tmp_path / "out", [a, b]), lambda: load_many([a, b])):
        with pytest.raises(ValueError, match=msg) as e:
            call()
        assert "\n" not in str(e.value) and str(a) in str(e.value)
    assert not (tmp_path / "out").exists()


def test_out_is_never_overwritten_unless_a_run_dir_and_overwrite(tmp_path):
    a = shard_dir(tmp_path / "a")
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("keep")
    with pytest.raises(ValueError, match="not a harness run directory"):
        merge_runs(other, [a], overwrite=True)
    assert (other / "precious.txt").read_text() == "keep"
    merge_runs(tmp_path / "out", [a])
    with pytest.raises(ValueError, match="already exists; pass --overwrite"):
        merge_runs(tmp_path / "out", [a])
    first = read_run_info(tmp_path / "out")["run_id"]
    merge_runs(tmp_path / "out", [a], overwrite=True)
    assert read_run_info(tmp_path / "out")["run_id"] != first
    with pytest.raises(ValueError, match="overlaps the input"):
        merge_runs(a, [a], overwrite=True)


def test_merge_of_three_runs_of_450_records_is_fast(tmp_path):
    dirs = [shard_dir(tmp_path / f"m{k}", repeat=28, specs=SPECS) for k in range(3)]  # 28*4*4 = 448 each
    assert len(load_records(dirs[0])) == 448
    t0 = time.perf_counter()
    res = merge_runs(tmp_path / "out", dirs)
    elapsed = time.perf_counter() - t0
    assert res.records == 3 * 448
    assert elapsed < 2.0, f"merge took {elapsed:.2f} s"


def test_failed_merge_leaves_no_out(tmp_path, monkeypatch):
    a = shard_dir(tmp_path / "a")
    import harness.merge as m

    def boom(*args, **kw):
        raise OSError("disk full")
    monkeypatch.setattr(m, "_merged_info", boom)
    with pytest.raises(OSError):
        merge_runs(tmp_path / "out", [a])
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["a"]
    shutil.rmtree(a)


SUITE = """
import pytest
SPECS = ["none", "rtn:bits=4", "rtn:bits=8", "nf4:group=64", "magnitude:sparsity=0.5"]
@pytest.mark.parametrize("spec", SPECS)
def test_technique(bench, harness_model, spec):
    for k, metric in enumerate(["ppl.window", "size.bytes", "fidelity.kl"]):
        bench.record(metric, 10.0 * (SPECS.index(spec) + 1) + k, spec=spec, technique=spec.split(":")[0])
"""


def test_two_shards_merged_equal_an_unsharded_run(pytester):
    """The CI recipe with N=2: two shard runs (own directories, as two CI jobs), merged,
    give exactly the unsharded run's (model, spec, metric) keys and values, no duplicates."""
    from harness.cli import main

    pytester.makepyfile(test_default=SUITE)
    common = ["-p", "no:cacheprovider", "--harness-quick", "--harness-model", "harness-tiny",
              "--harness-model", "other-model"]
    pytester.runpytest(*common, "--harness-out", "whole").assert_outcomes(passed=10)
    ran = [pytester.runpytest(*common, "--harness-shard", f"{i}/2", "--harness-out", f"s{i}").parseoutcomes()["passed"]
           for i in (1, 2)]
    assert ran == [5, 5]
    p = pytester.path
    assert main(["merge", str(p / "all"), str(p / "s1"), str(p / "s2")]) == 0
    merged, whole = load_records(p / "all"), load_records(p / "whole")
    as_set = lambda rs: sorted((r.model, r.spec, r.metric, r.value) for r in rs)  # noqa: E731
    assert as_set(merged) == as_set(whole) and len(merged) == 30
    assert len({(r.model, r.spec, r.metric) for r in merged}) == len(merged)  # no duplicates
    assert {r.record_id for r in merged} == {r.record_id for d in ("s1", "s2") for r in load_records(p / d)}
    info = read_run_info(p / "all")
    assert info["status"] == "complete" and [m["shard"] for m in info["merged_from"]] == ["1/2", "2/2"]
    assert len(load_outcomes(p / "all")) == 10
