"""Leaderboard: SQLite ingest (idempotent), ranking by metric and by cost-efficiency score,
history across runs, device classes kept apart."""
from __future__ import annotations

import pytest

from harness import leaderboard as lb
from harness.records import Record, RecordWriter
from harness.rundir import write_run_info

ROWS = [("none", 1000.0, 50.0, 10.0), ("rtn:bits=4", 300.0, 53.0, 8.0), ("magnitude:sparsity=0.5", 1000.0, 60.0, 10.5)]


def make_run(path, started, rows=ROWS, dc="cpu-test-2c", rtn_ppl=None):
    recs = []
    for spec, size, ppl, ms in rows:
        if spec.startswith("rtn") and rtn_ppl is not None:
            ppl = rtn_ppl
        ref = spec == "none"
        ctx = dict(model="tiny", spec=spec, technique=spec.split(":")[0], suite="default", device_class=dc,
                   run_id=path.name, storage="reference" if ref else "packed")
        recs += [Record("size.bytes", size, **ctx),
                 Record("size.compression_ratio", 1000.0 / size, **ctx),
                 Record("ppl.window", ppl, **ctx, extra={} if ref else {"reference": 50.0}),
                 Record("latency.decode_ms_per_token", ms, **ctx, extra={} if ref else {"reference": 10.0})]
    RecordWriter(path).write(recs)
    write_run_info(path, run_id=path.name, started=started, status="complete", profile="full")
    return path


def test_rank_by_metric_and_by_score(tmp_path):
    con = lb.connect(tmp_path / "lb.sqlite")
    assert lb.ingest(con, make_run(tmp_path / "r1", 100.0)) == 12
    items = lb.entries(con)
    assert [e.spec for e in lb.rank(items, "ppl.window")] == ["none", "rtn:bits=4", "magnitude:sparsity=0.5"]
    assert [e.spec for e in lb.rank(items, "size.compression_ratio")][0] == "rtn:bits=4"
    by_score = lb.rank(items)
    assert [e.spec for e in by_score] == ["rtn:bits=4", "none", "magnitude:sparsity=0.5"]
    scores = {e.spec: e.score for e in by_score}
    assert scores["none"] == 1.0
    assert scores["rtn:bits=4"] == pytest.approx((50 / 53) * (1000 / 300) / (8 / 10))
    assert scores["magnitude:sparsity=0.5"] == pytest.approx((50 / 60) * 1.0 / (10.5 / 10))


def test_history_latest_wins_and_ingest_is_idempotent(tmp_path):
    con = lb.connect(tmp_path / "lb.sqlite")
    r1 = make_run(tmp_path / "r1", 100.0)
    r2 = make_run(tmp_path / "r2", 200.0, rtn_ppl=70.0)  # rtn got worse in the newer run
    lb.ingest(con, r2)
    lb.ingest(con, r1)
    lb.ingest(con, r1)  # twice: no duplicate rows
    assert con.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 24
    hist = lb.history(con)[("tiny", "rtn:bits=4", "full", "cpu-test-2c")]
    assert [(e.run_id, e.metrics["ppl.window"]) for e in hist] == [("r1", 53.0), ("r2", 70.0)]
    latest = {e.spec: e for e in lb.entries(con)}
    assert latest["rtn:bits=4"].run_id == "r2"
    assert [e.spec for e in lb.rank(list(latest.values()), "ppl.window")][-1] == "rtn:bits=4"
    from harness.report.leaderboard_html import write_html

    html = write_html(con, tmp_path / "lb.html", "ppl.window").read_text()
    assert "History per entry" in html and "r1" in html and "r2" in html


def test_device_classes_are_separate_and_missing_figures_rank_last(tmp_path):
    con = lb.connect(tmp_path / "lb.sqlite")
    lb.ingest(con, make_run(tmp_path / "a", 1.0))
    lb.ingest(con, make_run(tmp_path / "b", 2.0, rows=[("none", 1000.0, 50.0, 1.0), ("rtn:bits=4", 300.0, 53.0, 0.5)],
                            dc="cuda-nvidia-h100"))
    assert {e.device_class for e in lb.entries(con, "cuda-nvidia-h100")} == {"cuda-nvidia-h100"}
    assert len(lb.entries(con)) == 5
    e = lb.Entry("tiny", "x", "full", "c", technique="x", metrics={"ppl.window": 40.0})
    e.score, e.score_note = lb._score(e)
    assert e.score is None and "missing" in e.score_note
    assert lb.rank([e, *lb.entries(con, "cpu-test-2c")])[-1] is e


def test_corrupt_database_is_a_clear_error(tmp_path):
    bad = tmp_path / "lb.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ValueError, match="not a harness leaderboard database"):
        lb.connect(bad)
