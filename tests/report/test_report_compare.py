"""harness compare: deltas between two runs, noise-aware verdicts, device-class warning."""
from __future__ import annotations

from harness.baselines.verdicts import judge_runs
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
    deltas, warnings = compare_runs(a, b, verdicts=judge_runs([a], [b]))
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


def test_same_host_runs_are_judged_with_both_sides_samples_and_other_hosts_are_not(tmp_path):
    """``harness compare A B`` is the same-host mode for free: B judged by ``judge_run`` with A
    as its baseline, samples of both sides; speed only where the fingerprints agree."""
    import numpy as np

    from harness.rundir import write_run_info

    def timed(path, ms, fp):
        v = list(ms * (1 + 0.01 * np.random.default_rng(len(str(path))).standard_normal(30)))
        ctx = dict(model="tiny", spec="rtn:bits=4", technique="rtn", suite="default", device_class="cpu-test-2c")
        RecordWriter(path).write([Record("latency.speedup_prefill", float(np.median(v)), n=30,
                                         samples={"values": v}, **ctx), Record("ppl.window", 50.0, **ctx)])
        write_run_info(path, run_id=path.name, status="complete", fingerprint=fp)
        return path

    here = {"cpu": "EPYC", "cpu_capability": "AVX2", "torch": "2.13.0"}
    a, b = timed(tmp_path / "a", 2.0, here), timed(tmp_path / "b", 1.7, here)  # 15% less speed-up
    deltas, _ = compare_runs(a, b, verdicts=judge_runs([a], [b]))
    by = {d.metric: d for d in deltas}
    assert by["latency.speedup_prefill"].verdict.status == "regressed"
    assert "bootstrap" in by["latency.speedup_prefill"].verdict.note  # both sides' samples
    other = timed(tmp_path / "c", 1.7, {**here, "cpu_capability": "AVX512"})
    by = {d.metric: d for d in compare_runs(a, other, verdicts=judge_runs([a], [other]))[0]}
    assert by["latency.speedup_prefill"].verdict.status == "not-comparable"
    assert by["ppl.window"].verdict.status == "pass"  # accuracy is judged on any host
