"""A row's verdict says what was judged: on a host whose fingerprint differs from the
baseline's, accuracy is judged, speed is listed as not compared with the reason, the
attention table has one line per reason, and the summary says how to get speed verdicts."""
from __future__ import annotations

from harness.baselines.store import update
from harness.baselines.verdicts import run_verdicts
from harness.records import Record, RecordWriter, load_records
from harness.report.html import write_report
from harness.report.markdown import render_markdown
from harness.report.summary import SPEED_HINT, attention, summarize, summary_lines
from harness.rundir import write_run_info

DC = "cpu-test-2c"
FP = {"cpu": "Test EPYC", "torch": "2.13.0", "transformers": "5.0", "torch_threads": 2}


def _run(path, fp, slow=1.0):
    ctx = dict(model="tiny", suite="default", device_class=DC, run_id=path.name, storage="packed")
    recs = []
    for spec, ppl, ms in (("none", 50.0, 10.0), ("rtn:bits=4", 52.0, 6.0), ("rtn:bits=8", 50.2, 8.0)):
        t = spec.split(":")[0]
        recs += [Record("ppl.window", ppl, spec=spec, technique=t, **ctx),
                 Record("latency.prefill_ms", ms * slow, spec=spec, technique=t, **ctx),
                 Record("memory.peak_rss_mb", 100.0, spec=spec, technique=t, **ctx)]
    RecordWriter(path).write(recs)
    write_run_info(path, run_id=path.name, status="complete", fingerprint=fp)
    return path


def test_rows_judge_what_compares_and_name_what_does_not(tmp_path):
    base = _run(tmp_path / "base", {**FP, "cpu_capability": "AVX2"})
    update(load_records(base), tmp_path / "bl", fingerprint={**FP, "cpu_capability": "AVX2"})
    run = _run(tmp_path / "run", {**FP, "cpu_capability": "AVX512"}, slow=0.7)
    vs = run_verdicts(run, tmp_path / "bl")
    s = summarize(run, vs)
    rows = {r.spec: r for r in s.rows}
    assert rows["rtn:bits=8"].verdict == "pass"  # accuracy compared, speed not: never "not-comparable" alone
    assert rows["rtn:bits=8"].verdict_text == "pass · speed, memory not compared (AVX2 baseline, this host AVX512)"
    assert rows["rtn:bits=4"].verdict == "pass"  # 52 vs 52
    groups = [a for a in attention(vs) if a["status"] == "not-comparable"]
    assert len(groups) == 1 and groups[0]["note"] == "AVX2 baseline, this host AVX512"
    assert groups[0]["metric"] == "6 speed, memory metric(s)"
    lines = summary_lines(run, vs)
    assert SPEED_HINT in lines and any("pass · speed, memory not compared (AVX2" in x for x in lines)
    html = write_report(run, verdicts=vs).read_text()
    assert "speed, memory not compared (AVX2 baseline, this host AVX512)" in html and 'id="speed-hint"' in html
    assert html.count("AVX2 baseline, this host AVX512</td>") == 1  # one attention line, not one per metric
    assert "harness run --against origin/main" in render_markdown(run, vs)


def test_a_host_matching_the_baseline_gets_no_hint(tmp_path):
    base = _run(tmp_path / "base", {**FP, "cpu_capability": "AVX2"})
    update(load_records(base), tmp_path / "bl", fingerprint={**FP, "cpu_capability": "AVX2"})
    run = _run(tmp_path / "run", {**FP, "cpu_capability": "AVX2"})
    vs = run_verdicts(run, tmp_path / "bl")
    s = summarize(run, vs)
    assert not s.speed_hint() and all(r.not_compared == "" for r in s.rows)
