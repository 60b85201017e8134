"""harness compare: deltas between two runs, noise-aware verdicts, device-class warning."""
from __future__ import annotations

from harness.records import Record, RecordWriter
from harness.report.compare import compare_runs, delta_lines, write_compare_html


def run(path, ppl, ms, spread, dc="cpu-test-2c"):
    ctx = dict(model="tiny", spec="rtn:bits=4", technique="rtn", suite="default", device_class=dc)
    RecordWriter(path).write([Record("ppl.window", ppl, **ctx),
                              Record("latency.prefill_ms", ms, n=9, spread=spread, **ctx),
                              Record.na("energy.j_per_token", "no GPU", **ctx)])
    return path


def test_compare_deltas_and_verdicts(tmp_path):
    a = run(tmp_path / "a", 50.0, 10.0, {"p10": 9.0, "p90": 11.0})
    b = run(tmp_path / "b", 55.0, 10.8, {"p10": 10.5, "p90": 11.5})  # ppl +10%; latency +8% inside noise
    deltas, warnings = compare_runs(a, b)
    by = {d.metric: d for d in deltas}
    assert warnings == []
    assert by["ppl.window"].verdict.status == "regressed" and round(by["ppl.window"].pct, 6) == 10.0
    assert by["latency.prefill_ms"].verdict.status == "pass"
    assert by["energy.j_per_token"].verdict is None
    lines = delta_lines(deltas)
    assert any("ppl.window" in x and "+10.0%" in x and "regressed" in x for x in lines)
    html = write_compare_html(a, b, deltas, warnings, tmp_path / "c.html").read_text()
    assert "B regressed against A" in html and "v-regressed" in html


def test_compare_warns_on_device_class_mismatch(tmp_path):
    a = run(tmp_path / "a", 50.0, 10.0, {})
    b = run(tmp_path / "b", 50.0, 2.0, {}, dc="cuda-nvidia-h100")
    deltas, warnings = compare_runs(a, b, metrics=["ppl.window"])
    assert [d.metric for d in deltas] == ["ppl.window"]
    assert len(warnings) == 1 and "cuda-nvidia-h100" in warnings[0] and "not comparable" in warnings[0]
