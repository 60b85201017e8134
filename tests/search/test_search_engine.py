"""The search loop (harness/search/engine.py) with a stub evaluator: what is measured,
what a resume repeats (nothing), budgets, proxy screening and impossible constraints."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from search_stub import StubEvaluator, figures

from harness.records import load_records
from harness.search import store
from harness.search.engine import BudgetError, Search
from harness.search.frontier import read_frontier
from harness.search.space import load_space

pytest.importorskip("optuna")
SPACE = Path(__file__).with_name("rtn_space.yaml")


def _search(tmp_path, ev, name="run", **kw):
    cfg = store.SearchConfig(model="stub", space=str(SPACE), **{"trials": 12, "startup_trials": 4, **kw})
    return Search(cfg, load_space(SPACE), ev, tmp_path / name, run_id=name)


def _front(run_dir):
    return [(r["search_spec"], r["values"]) for r in read_frontier(run_dir)["frontier"]]


def test_every_point_is_a_record_and_the_frontier_is_non_dominated(tmp_path):
    ev = StubEvaluator()
    out = _search(tmp_path, ev).run()
    assert out.status == "complete" and out.trials == 12
    assert len(ev.compressions) == len(set(ev.compressions)) == out.evaluations  # a repeated spec is reused
    recs = load_records(tmp_path / "run")
    specs = {r.spec for r in recs}
    assert set(ev.compressions) | {"none"} == specs
    assert all(r.suite == "search" and r.model == "stub" and r.run_id == "run" for r in recs)
    pts = {s: figures(s) for s in specs}  # the known answer: brute-force non-dominated set
    best = {s for s, (a, b) in pts.items() if not any(x <= a and y <= b and (x, y) != (a, b) for x, y in pts.values())}
    assert {s for s, _ in _front(tmp_path / "run")} == best
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "complete" and info["profile"] == "search"


def test_interrupted_search_resumes_without_re_measuring_and_ends_on_the_same_frontier(tmp_path):
    whole = StubEvaluator()
    _search(tmp_path, whole, "whole").run()
    first = StubEvaluator(interrupt_at=5)
    with pytest.raises(KeyboardInterrupt):
        _search(tmp_path, first, "cut").run()
    assert read_frontier(tmp_path / "cut")["status"] == "partial"
    assert store.read_state(tmp_path / "cut").status == "partial"
    second = StubEvaluator()
    out = _search(tmp_path, second, "cut").run()
    assert not set(first.compressions) & set(second.compressions)  # nothing measured twice
    assert sorted(first.compressions + second.compressions) == sorted(whole.compressions)
    assert out.trials == 12 and store.read_state(tmp_path / "cut").sessions == 2
    assert _front(tmp_path / "cut") == _front(tmp_path / "whole")


def test_more_trials_on_resume_extend_the_same_sequence(tmp_path):
    _search(tmp_path, StubEvaluator(), "long", trials=10).run()
    _search(tmp_path, StubEvaluator(), "short", trials=6).run()
    ev = StubEvaluator()
    _search(tmp_path, ev, "short", trials=10).run()
    assert _front(tmp_path / "short") == _front(tmp_path / "long")


def test_a_budget_that_cannot_cover_one_evaluation_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(BudgetError, match="cannot cover one evaluation"):
        _search(tmp_path, StubEvaluator(reference_delay=0.3), trials=None, budget_s=0.4).run()
    assert not (tmp_path / "run").exists()


def test_budget_stops_the_search(tmp_path):
    out = _search(tmp_path, StubEvaluator(), trials=None, budget_s=1.5).run()
    assert out.status == "complete" and out.spent_s < 4
    assert "budget spent" in out.stop_reason or "exhausted" in out.stop_reason


def test_proxy_screens_out_points_that_miss_the_constraint(tmp_path):
    ev = StubEvaluator()
    out = _search(tmp_path, ev, constraints=("ppl.window<=+10%",)).run()
    screened = [p for p in out.points if p.fidelity == "proxy"]
    full = [p for p in out.points if p.fidelity == "full" and not p.reference]
    assert screened and full
    for p in screened:  # never measured in full, and truly infeasible (the stub's proxy is unbiased after scaling)
        assert (p.spec, "full") not in ev.measured
        assert figures(p.spec)[1] > 10 * 1.1
    assert all(p.feasible for p in out.frontier)
    recs = [r for r in load_records(tmp_path / "run") if r.spec == screened[0].spec]
    assert recs and all(r.extra["profile"] == "search-proxy" for r in recs)


def test_an_impossible_constraint_ends_infeasible_with_the_closest_points(tmp_path):
    out = _search(tmp_path, StubEvaluator(), constraints=("size.bytes<=10",), trials=5).run()
    assert out.status == "infeasible"
    assert out.closest and out.closest[0].violation <= out.closest[-1].violation
    assert read_frontier(tmp_path / "run")["status"] == "infeasible"
    assert [r["reference"] for r in read_frontier(tmp_path / "run")["frontier"]] in ([], [False])


def test_seeds_are_measured_first_and_kept_on_resume(tmp_path):
    space = tmp_path / "s.yaml"
    space.write_text(SPACE.read_text() + "seeds: ['rtn:bits=8']\n")
    cfg = store.SearchConfig(model="stub", space=str(space), trials=3, startup_trials=2)
    ev = StubEvaluator()
    Search(cfg, load_space(space), ev, tmp_path / "r").run()
    assert ev.compressions[0] == "rtn:bits=8"
    ev2 = StubEvaluator()
    Search(cfg, load_space(space), ev2, tmp_path / "r").run()
    assert ev2.compressions == []  # 3 trials already done, the seed already measured
