"""``harness search`` end to end on harness-tiny (the real compress -> measure path): two
trials on a two-spec space, records that ``harness eval`` would produce, a report."""
from __future__ import annotations

import json

import pytest

from harness.cli import main
from harness.records import load_records

pytest.importorskip("optuna")


@pytest.mark.slow
def test_search_on_harness_tiny_writes_measured_points_and_a_frontier(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("techniques:\n  rtn: {bits: [4, 8], group: 128}\n")
    run = tmp_path / "run"
    code = main(["search", "--model", "harness-tiny", "--space", str(space), "--trials", "2", "--seed", "0",
                 "--max-tokens", "512", "--proxy-tokens", "256", "--out", str(run), "--threads", "1"])
    assert code == 0, capsys.readouterr().err
    recs = load_records(run)
    by = {(r.spec, r.metric): r for r in recs}
    ref_ppl, ref_size = by[("none", "ppl.window")].value, by[("none", "size.bytes")].value
    specs = {r.spec for r in recs} - {"none"}
    assert specs and specs <= {"rtn:bits=4", "rtn:bits=8", "rtn:bits=4,group=128", "rtn:bits=8,group=128"}
    for s in specs:  # real figures: packed storage is smaller than fp32, measured perplexity
        assert by[(s, "size.bytes")].value < ref_size and by[(s, "ppl.window")].value > 0
        assert by[(s, "ppl.window")].n >= 1 and by[(s, "compress.wall_s")].value > 0
    front = {r["spec"] for r in json.loads((run / "frontier.json").read_text())["frontier"]}
    pts = {s: (by[(s, "size.bytes")].value, by[(s, "ppl.window")].value) for s in specs | {"none"}}
    assert front == {s for s, (a, b) in pts.items()  # brute force: not dominated by any measured point
                     if not any(x <= a and y <= b and (x, y) != (a, b) for x, y in pts.values())}
    assert ref_ppl > 0
    assert "search frontier" in (run / "report.html").read_text()
