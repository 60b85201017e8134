"""Shard split: deterministic, disjoint, complete, balanced by recorded time (else by count)."""
from __future__ import annotations

import json

import pytest

from harness.shard import durations_from_runs, load_durations, parse_shard, select, split

IDS = [f"suites/test_default.py::test_technique[t{k:02d}-harness-tiny]" for k in range(29)]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 29, 40])
def test_split_is_a_partition_in_input_order_and_count_balanced(n):
    parts = split(IDS, n)
    assert sorted(t for p in parts for t in p) == sorted(IDS)
    assert all(p == [t for t in IDS if t in set(p)] for p in parts)  # collection order kept
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_split_is_deterministic_whatever_the_collection_order():
    times = {t: float(k % 5 + 1) for k, t in enumerate(IDS)}
    a = [set(p) for p in split(IDS, 3, times)]
    b = [set(p) for p in split(list(reversed(IDS)), 3, times)]
    assert a == b


def test_split_balances_recorded_time_not_count():
    ids = ["long", "a", "b", "c", "d", "e"]
    times = {"long": 10.0, "a": 2.0, "b": 2.0, "c": 2.0, "d": 2.0, "e": 2.0}
    parts = split(ids, 2, times)
    assert {frozenset(p) for p in parts} == {frozenset({"long"}), frozenset("abcde")}
    # unknown tests weigh the mean of the known ones
    parts = split(["x", "y", "long", "short"], 2, {"long": 9.0, "short": 1.0})
    totals = sorted(sum({"long": 9.0, "short": 1.0}.get(t, 5.0) for t in p) for p in parts)
    assert totals == [10.0, 10.0]


def test_select_matches_split():
    assert select(IDS, (2, 3)) == set(split(IDS, 3)[1])


@pytest.mark.parametrize("bad, msg", [("3/2", "need 1 <= I <= N"), ("0/0", "need 1 <= I <= N"),
                                      ("0/3", "need 1 <= I <= N"), ("a/b", "expected I/N"), ("2", "expected I/N")])
def test_bad_shard_spec(bad, msg):
    with pytest.raises(ValueError, match=msg) as e:
        parse_shard(bad)
    assert bad in str(e.value) and "\n" not in str(e.value)


def test_durations_from_outcomes_and_files(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"nodeid": "t1", "when": "call", "outcome": "passed", "duration": 3.5},
            {"nodeid": "t2", "when": "setup", "outcome": "failed", "duration": 9.0}]
    (run / "outcomes-main.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "{torn")
    assert durations_from_runs([run]) == {"t1": 3.5}
    assert load_durations(run) == {"t1": 3.5}
    (tmp_path / "d.json").write_text('{"t1": 2}')
    assert load_durations(tmp_path / "d.json") == {"t1": 2.0}
    (tmp_path / "bad.json").write_text('["t1"]')
    for bad, msg in ((tmp_path / "bad.json", "expected a JSON object"), (tmp_path / "none.json", "does not exist")):
        with pytest.raises(ValueError, match=msg):
            load_durations(bad)
