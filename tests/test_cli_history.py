"""``harness history`` and ``harness leaderboard`` over a history with a planted step."""
from __future__ import annotations

from harness.cli import main
from harness.records import Record, RecordWriter
from harness.rundir import write_run_info


def _runs(root, n=8, step_at=5):
    dirs = []
    for i in range(n):
        path = root / f"n{i:02d}"
        v = 10.0 if i < step_at else 14.0  # +40% decode time from run step_at on (tolerance 25%)
        recs = [Record("latency.decode_ms_per_token", v, model="tiny", spec="rtn:bits=4", technique="rtn",
                       suite="default", device_class="cpu-test-2c", run_id=path.name)]
        RecordWriter(path).write(recs)
        write_run_info(path, run_id=path.name, started=100.0 + i, status="complete", profile="quick",
                       commit=f"c{i}" + "0" * 38, fingerprint={"cpu": "Test"})
        dirs.append(str(path))
    return dirs


def test_history_lists_the_step_with_the_first_run_after_it(tmp_path, capsys):
    dirs = _runs(tmp_path)
    assert main(["history", *dirs, "--db", str(tmp_path / "h.sqlite")]) == 0
    out = capsys.readouterr().out
    assert "tiny rtn:bits=4 [full, cpu-test-2c] latency.decode_ms_per_token: 10 -> 14 (+40.0%) " \
           "first in run n05 (after n04)" in out
    assert "commits c40000000000..c50000000000" in out and "1 step(s) in 8 run(s)" in out
    assert main(["leaderboard", "--db", str(tmp_path / "h.sqlite"), "--no-ingest", "--metric",
                 "latency.decode_ms_per_token", "--html", str(tmp_path / "lb.html")]) == 0
    html = (tmp_path / "lb.html").read_text()
    assert "<h2>Trends</h2>" in html and "first in run n05" in html


def test_history_needs_enough_runs_and_a_known_metric(tmp_path, capsys):
    dirs = _runs(tmp_path, n=2)
    assert main(["history", *dirs, "--db", str(tmp_path / "h.sqlite")]) == 0
    assert "a series needs >= 4 runs to detect a step" in capsys.readouterr().out
    assert main(["history", "--db", str(tmp_path / "h.sqlite"), "--no-ingest", "--metric", "ppl.windw"]) == 2
    assert "did you mean 'ppl.window'" in capsys.readouterr().err
