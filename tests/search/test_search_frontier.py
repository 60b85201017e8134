"""Objectives, constraints, budgets and the frontier (harness/search/frontier.py)."""
from __future__ import annotations

import pytest

from harness.search.frontier import (
    Objective,
    Point,
    closest,
    dominates,
    frontier,
    frontier_keys,
    parse_budget,
    parse_constraint,
    parse_objectives,
    write_frontier,
)

SIZE_PPL = [Objective("size.bytes", False), Objective("ppl.window", False)]


def _p(spec, size, ppl, **kw):
    return Point(spec, {"size.bytes": size, "ppl.window": ppl}, **kw)


def test_frontier_of_constructed_points_is_the_known_answer():
    pts = [_p("a", 1, 30), _p("b", 2, 20), _p("c", 3, 10), _p("d", 2, 25),  # d: dominated by b
           _p("e", 4, 10), _p("f", 3, 10.5), _p("g", 1, 31),                 # e by c, f by c, g by a
           _p("h", 0.5, 50, violation=0.2),                                   # infeasible: left out
           _p("i", 0.1, 5, fidelity="proxy")]                                 # proxy only: never on it
    assert [p.spec for p in frontier(pts, SIZE_PPL)] == ["a", "b", "c"]


def test_equal_points_are_both_on_the_frontier_and_directions_come_from_the_metric():
    assert [p.spec for p in frontier([_p("x", 1, 2), _p("y", 1, 2)], SIZE_PPL)] == ["x", "y"]
    objs = parse_objectives("size.bytes,fidelity.top1")
    assert [o.direction for o in objs] == ["minimize", "maximize"]
    a = Point("a", {"size.bytes": 1, "fidelity.top1": 0.9})
    b = Point("b", {"size.bytes": 1, "fidelity.top1": 0.8})
    assert dominates(a, b, objs) and not dominates(b, a, objs)
    assert not dominates(a, Point("c", {"size.bytes": 1}), objs)  # an unmeasured objective decides nothing


def test_closest_orders_by_violation_and_skips_the_reference():
    pts = [_p("none", 9, 1, reference=True), _p("far", 1, 1, violation=3.0), _p("near", 1, 1, violation=0.1)]
    assert [p.spec for p in closest(pts, 2)] == ["near", "far"]


@pytest.mark.parametrize("text,metric,op,value,relative,bound", [
    ("ppl.window<=+5%", "ppl.window", "<=", 0.05, True, 10.5),
    ("ppl.window <= 5%", "ppl.window", "<=", 0.05, True, 10.5),
    ("size.bytes<=-75%", "size.bytes", "<=", -0.75, True, 2.5),
    ("size.bytes<=2e6", "size.bytes", "<=", 2e6, False, 2e6),
    ("fidelity.top1>=0.9", "fidelity.top1", ">=", 0.9, False, 0.9),
])
def test_constraint_parsing(text, metric, op, value, relative, bound):
    c = parse_constraint(text)
    assert (c.metric, c.op, c.relative) == (metric, op, relative)
    assert c.value == pytest.approx(value)
    assert c.bound(10.0) == pytest.approx(bound)


def test_constraint_violation_is_relative_to_the_bound():
    c = parse_constraint("ppl.window<=+5%")
    assert c.violation(10.5, 10.0) == pytest.approx(0.0)
    assert c.violation(11.55, 10.0) == pytest.approx(0.1)
    assert c.violation(9.0, 10.0) < 0
    assert c.violation(None, 10.0) == float("inf")
    assert parse_constraint("fidelity.top1>=0.9").violation(0.81, None) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="reference"):
        c.bound(None)


@pytest.mark.parametrize("text,match", [
    ("ppl.window=5", "expected METRIC<=VALUE"),
    ("ppl.window<=abc", "expected METRIC<=VALUE"),
    ("ppl.windw<=+5%", "did you mean 'ppl.window'"),
    ("size.bytes<=+5", "needs '%'"),
    ("fidelity.cosine>=0.9", "encoder"),
])
def test_bad_constraints_are_one_line_errors(text, match):
    with pytest.raises(ValueError, match=match) as e:
        parse_constraint(text)
    assert "\n" not in str(e.value)


def test_objective_errors():
    for text, match in [("", "empty"), ("size.bytes,size.bytes", "twice"), ("size.byte", "did you mean"),
                        ("fidelity.cosine", "encoder")]:
        with pytest.raises(ValueError, match=match):
            parse_objectives(text)


@pytest.mark.parametrize("text,seconds", [("20m", 1200), ("90s", 90), ("1h30m", 5400), ("1.5m", 90), ("2h", 7200)])
def test_budget_parsing(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["20x", "", "0s", "m", "20", "-5m"])
def test_bad_budgets(text):
    with pytest.raises(ValueError, match="budget"):
        parse_budget(text)


def test_frontier_file_round_trip(tmp_path):
    write_frontier(tmp_path, [{"model": "m", "spec": "rtn:bits=4", "profile": "search"}], status="complete")
    assert frontier_keys(tmp_path) == {("m", "rtn:bits=4", "search")}
    (tmp_path / "frontier.json").write_text("{torn")
    assert frontier_keys(tmp_path) == set()
