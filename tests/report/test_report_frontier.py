"""The report marks a search run's frontier (frontier.json): a tag on the frontier rows, the
points ringed and joined on the Pareto charts; proxy-screened rows stay off the charts."""
from __future__ import annotations

from harness.records import Record, RecordWriter
from harness.report.charts import Point, pareto_svg
from harness.report.html import _points, write_report
from harness.report.summary import summarize
from harness.search.frontier import frontier_keys, write_frontier


def _rows(run, spec, size, ppl, profile="search"):
    extra = {"profile": profile}
    RecordWriter(run, worker="search").write([
        Record("size.bytes", size, model="m", spec=spec, technique=spec.split(":")[0], storage="packed", extra=extra),
        Record("ppl.window", ppl, model="m", spec=spec, technique=spec.split(":")[0], storage="packed", extra=extra)])


def test_frontier_rows_are_tagged_and_drawn(tmp_path):
    run = tmp_path / "run"
    _rows(run, "none", 16e6, 10.0)
    _rows(run, "rtn:bits=4", 4e6, 11.0)
    _rows(run, "rtn:bits=2", 3e6, 40.0)  # measured, not on the frontier (dominated by nothing, but not marked)
    _rows(run, "rtn:bits=3", 3.5e6, 999.0, profile="search-proxy")
    write_frontier(run, [{"model": "m", "spec": s, "profile": "search"} for s in ("none", "rtn:bits=4")])
    html = write_report(run).read_text()
    table = html.split("<h3>Pareto charts</h3>")[0]
    first = [r.split('<td class="l">', 1)[1].split("</td>", 1)[0] for r in table.split("<tr")[1:]
             if '<td class="l">' in r]
    assert {c.split(" ", 1)[0] for c in first if "search frontier" in c} == {"none", "rtn:bits=4"}
    charts = html.split("<h3>Pareto charts</h3>")[1]
    assert "search frontier" in charts  # the chart legend
    pts = _points(summarize(run).rows, "size.bytes", "ppl.window", frontier=frozenset(frontier_keys(run)))
    # the proxy row (a shorter protocol) is left out
    assert {p.label: p.frontier for p in pts} == {"none": True, "rtn:bits=4": True, "rtn:bits=2": False}


def test_a_plain_run_has_no_frontier_marks(tmp_path):
    _rows(tmp_path, "none", 16e6, 10.0, profile="quick")
    _rows(tmp_path, "rtn:bits=4", 4e6, 11.0, profile="quick")
    assert "search frontier" not in write_report(tmp_path).read_text()


def test_pareto_svg_draws_the_search_frontier_only_when_marked():
    pts = [Point("a", 1, 3, frontier=True), Point("b", 2, 2, frontier=True), Point("c", 3, 2.5)]
    assert "search frontier" in pareto_svg(pts, "x", "y", "t")
    assert "search frontier" not in pareto_svg([Point("a", 1, 3), Point("b", 2, 2)], "x", "y", "t")
