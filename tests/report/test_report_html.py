"""The HTML report: every record present, hostile names escaped, verdict colours, N/A
reasons as tooltips, partial-run banner, Pareto charts; and the Markdown summary."""
from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from harness.baselines.file import SCHEMA
from harness.baselines.verdicts import run_verdicts
from harness.paths import append_jsonl
from harness.records import NoRecordsError, Record, RecordWriter, load_records
from harness.report.charts import Point, pareto_front, pareto_svg
from harness.report.html import write_report
from harness.report.markdown import render_markdown
from harness.rundir import write_run_info

DC = "cpu-test-2c"
EVIL = "<script>alert('x')</script>"


def fake_run(run_dir: Path, model: str = "tiny", status: str | None = "complete", quick=False) -> list[Record]:
    """Records of a reference and two techniques, as the bench fixture would write them."""
    prof = {"profile": "quick" if quick else "full"}
    rows = [("none", "reference", 1000.0, 50.0, 0.0, 10.0), ("rtn:bits=4", "packed", 300.0, 53.0, 0.05, 8.0),
            ("magnitude:sparsity=0.5", "mask", 1000.0, 60.0, 0.2, 10.5)]
    recs = []
    for spec, storage, size, ppl, kl, ms in rows:
        ctx = dict(model=model, spec=spec, technique=spec.split(":")[0], storage=storage, suite="default",
                   device_class=DC, run_id=run_dir.name, test_id=f"suites/test_default.py::test_t[{spec}]")
        delta = {} if spec == "none" else {"reference": 50.0, "delta": ppl - 50, "delta_pct": 100 * (ppl / 50 - 1)}
        recs += [Record("size.bytes", size, **ctx, extra=dict(prof)),
                 Record("size.compression_ratio", 1000.0 / size, **ctx, extra=dict(prof)),
                 Record("ppl.window", ppl, **ctx, extra={**prof, **delta}),
                 Record("fidelity.kl", kl, **ctx, extra=dict(prof)),
                 Record("latency.decode_ms_per_token", ms, n=5, spread={"p10": ms * .9, "p90": ms * 1.1}, **ctx,
                        extra={**prof, "reference": 10.0}),
                 Record("latency.prefill_ms", 3 * ms, n=5, spread={"p10": ms * 2.9, "p90": ms * 3.1}, **ctx,
                        extra={**prof, "reference": 30.0}),
                 Record.na("energy.j_per_token", "NVML energy needs a CUDA GPU (measured on cpu)", **ctx,
                           extra=dict(prof))]
        if spec != "none":
            recs.append(Record("compress.wall_s", 0.5, **ctx, extra=dict(prof)))
    RecordWriter(run_dir, worker="gw0").write(recs[: len(recs) // 2])
    RecordWriter(run_dir, worker="gw1").write(recs[len(recs) // 2:])
    append_jsonl(run_dir / "outcomes-main.jsonl", [
        {"nodeid": f"suites/test_default.py::test_t[{s}]", "when": "call", "outcome": "passed", "duration": 1.0,
         "message": ""} for s, *_ in rows])
    if status:
        write_run_info(run_dir, run_id=run_dir.name, status=status, profile=prof["profile"],
                       partial_reason="interrupted (Ctrl-C or a fatal error) before all tests ran"
                       if status == "partial" else "", fingerprint={"cpu": "Test CPU", "torch": "2.x"})
    return recs


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(path: Path) -> Tags:
    p = Tags()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def test_report_contains_every_record_and_escapes_script(tmp_path):
    run = tmp_path / "run1"
    recs = fake_run(run, model=EVIL)
    path = write_report(run)
    assert path == run / "report.html"
    page = parse(path)
    ids = {a["data-record-id"] for t, a in page.tags if "data-record-id" in a}
    assert ids == {r.record_id for r in recs}
    assert not [t for t, _ in page.tags if t in ("script", "link", "img", "iframe")]  # no scripts, no network
    text = path.read_text()
    assert EVIL not in text and "&lt;script&gt;" in text
    links = [v for _, a in page.tags for k, v in a.items() if k in ("src", "href", "xlink:href") and v]
    assert all(v.startswith("#") for v in links), links  # only in-page references
    assert EVIL in "".join(page.text)  # shown to the reader, as text
    assert sum(1 for t, _ in page.tags if t == "svg") >= 2  # accuracy vs size and vs latency, inline


def test_na_reason_tooltip_simulated_tag_and_deltas(tmp_path):
    run = tmp_path / "r"
    fake_run(run)
    page = parse(write_report(run))
    titles = [a.get("title", "") for t, a in page.tags if t == "td"]
    # energy is N/A in every row: folded into one note with the reason, not a column of N/A
    text = "".join(page.text)
    assert "NVML energy needs a CUDA GPU" in text
    assert any("p10–p90" in t for t in titles)
    assert "53.00 (+6.0%)" in text and "0.30 MB" not in text and "simulated" in text


def test_latency_columns_name_the_kernel(tmp_path):
    run = tmp_path / "r"
    recs = fake_run(run)
    kern = "int4pack-bf16 x12, torch F.linear float32 x1"
    rtn = [r for r in recs if r.spec == "rtn:bits=4" and r.metric.startswith("latency.")][0]
    RecordWriter(run, worker="gw2").write([Record(rtn.metric, rtn.value, n=5, model=rtn.model, spec=rtn.spec,
                                                  technique="rtn", storage="packed", suite="default",
                                                  device_class=DC, run_id=run.name, test_id=rtn.test_id,
                                                  timestamp=rtn.timestamp + 1, extra={"kernel": kern})])
    page = parse(write_report(run))
    titles = [a.get("title", "") for t, a in page.tags if t == "td"]
    assert "".join(page.text).count(kern) == 1  # one tag in the row's first latency column
    assert any(t.startswith(f"kernel: {kern}") for t in titles)


def test_verdict_colours_and_regression_banner(tmp_path):
    run = tmp_path / "r"
    fake_run(run)
    bl = tmp_path / "bl" / "default" / f"{DC}.json"
    bl.parent.mkdir(parents=True)
    bl.write_text(json.dumps({"schema": SCHEMA, "suite": "default", "device_class": DC, "entries": [
        {"model": "tiny", "spec": "rtn:bits=4", "profile": "full",
         "metrics": {"ppl.window": {"value": 50.0, "direction": "lower", "tolerance": "2%"},
                     "size.bytes": {"value": 300.0, "direction": "lower", "tolerance": "1%"}}}]}))
    page = parse(write_report(run, verdicts=run_verdicts(run, tmp_path / "bl")))
    cells = [a.get("class", "") for t, a in page.tags if t == "td"]
    assert any("v-regressed" in c for c in cells) and any("v-pass" in c for c in cells)
    text = "".join(page.text)
    assert "1 metric(s) regressed against the baseline" in text
    assert "ppl.window regressed: baseline 50, measured 53" in "".join(
        a.get("title", "") for t, a in page.tags if t == "td")


@pytest.mark.parametrize("status, why", [("partial", "interrupted"), (None, "never finished")])
def test_partial_run_banner(tmp_path, status, why):
    run = tmp_path / "r"
    fake_run(run, status=status)
    page = parse(write_report(run))
    banner = [a for t, a in page.tags if a.get("id") == "partial-banner"]
    assert banner and why in "".join(page.text)


def test_no_records_is_a_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoRecordsError, match="no records"):
        write_report(tmp_path / "empty")


def test_markdown_summary(tmp_path):
    run = tmp_path / "r"
    fake_run(run, model="a|b", status="partial")
    md = render_markdown(run)
    assert "> **Partial run:**" in md and "Tests: 3 passed" in md
    table = [line for line in md.splitlines() if line.startswith("| a\\|b |")]
    assert len(table) == 3  # one row per technique, the pipe in the model name escaped
    assert "mask (simulated)" in md


def test_pareto_front_and_svg_escaping():
    pts = [Point("a", 1, 10), Point("b", 2, 5), Point("c", 3, 6), Point("d", 4, 1), Point("e", 2, 11)]
    assert [p.label for p in pareto_front(pts)] == ["a", "b", "d"]
    assert [p.label for p in pareto_front(pts, y_higher=True)] == ["a", "e"]  # lower x, higher y
    svg = pareto_svg([Point(EVIL, 1, 2), Point("ok", 2, 1)], "x", "y", "t")
    assert svg.startswith("<svg") and "<script" not in svg and "&lt;script&gt;" in svg


def test_summary_explains_a_host_that_moved(tmp_path):
    """When the uncompressed reference's own latency moved against its baseline, the summary
    says so in one sentence (the host moved), next to the verdict legend."""
    from harness.baselines.store import update
    from harness.report.summary import LEGEND, summary_lines

    def run(path, ref_ms, rtn_ms):
        ctx = dict(model="tiny", suite="default", device_class=DC, run_id=path.name, storage="packed")
        RecordWriter(path).write([
            Record("latency.prefill_ms", ref_ms, spec="none", technique="none", **ctx),
            Record("latency.prefill_ms", rtn_ms, spec="rtn:bits=4", technique="rtn", **ctx),
            Record("size.bytes", 100.0, spec="none", technique="none", **ctx)])
        write_run_info(path, run_id=path.name, status="complete")
        return path

    update(load_records(run(tmp_path / "base", 10.0, 5.0)), tmp_path / "bl")
    same_dir = run(tmp_path / "same", 10.5, 5.2)
    same = summary_lines(same_dir, run_verdicts(same_dir, tmp_path / "bl"))
    assert f"  ({LEGEND})" in same and not any(line.startswith("Host moved") for line in same)
    slow_dir = run(tmp_path / "slow", 15.0, 7.5)
    vs = run_verdicts(slow_dir, tmp_path / "bl")
    slow = summary_lines(slow_dir, vs)
    [note] = [line for line in slow if line.startswith("Host moved")]
    assert "latency.prefill_ms +50%" in note
    assert "Host moved" in render_markdown(slow_dir, vs)
    assert 'id="host-banner"' in write_report(slow_dir, verdicts=vs).read_text()
