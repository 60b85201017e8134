import json
import subprocess
import sys

import pytest

from harness.records import NoRecordsError, Record, RecordWriter, load_dataframe, load_records
from harness.registry import UnknownNameError


def test_record_fills_unit_and_direction_from_the_metric_registry():
    r = Record("latency.decode_tok_s", 12.5, n=7, spread={"p10": 11.0, "p90": 13.0})
    assert r.unit == "tok/s" and r.higher_is_better is True and r.n == 7
    assert Record("ppl.window", 3.0).higher_is_better is False


def test_unknown_metric_and_na_without_reason_are_errors():
    with pytest.raises(UnknownNameError, match="did you mean 'ppl.window'"):
        Record("ppl.windw", 1.0)
    with pytest.raises(ValueError, match="needs a reason"):
        Record("ppl.window", None, status="na")


def test_non_finite_values_become_error_records():
    r = Record("ppl.window", float("inf"))
    assert r.status == "error" and "non-finite" in r.reason
    assert r.to_dict()["value"] is None


def test_writer_per_worker_and_merge_dedupes(tmp_path, monkeypatch):
    a = Record("size.bytes", 10)
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    RecordWriter(tmp_path).write([a, Record("size.params", 3)])
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    w = RecordWriter(tmp_path)
    w.write([a, Record.na("energy.j_per_token", "no GPU")])  # a duplicated on purpose
    assert sorted(p.name for p in tmp_path.iterdir()) == ["records-gw0.jsonl", "records-gw1.jsonl"]
    recs = load_records(tmp_path)
    assert len(recs) == 3
    assert {r.metric for r in recs} == {"size.bytes", "size.params", "energy.j_per_token"}
    df = load_dataframe(tmp_path)
    assert list(df.sort_values("metric")["metric"]) == ["energy.j_per_token", "size.bytes", "size.params"]


def test_torn_last_line_is_skipped(tmp_path):
    RecordWriter(tmp_path, worker="main").write([Record("size.bytes", 1)])
    with open(tmp_path / "records-main.jsonl", "a") as f:
        f.write('{"metric": "size.par')  # killed mid-write
    assert [r.metric for r in load_records(tmp_path)] == ["size.bytes"]


def test_empty_or_missing_run_dir_is_a_clear_error(tmp_path):
    with pytest.raises(NoRecordsError, match="has no records"):
        load_records(tmp_path)
    with pytest.raises(NoRecordsError, match="does not exist"):
        load_records(tmp_path / "nope")


def test_concurrent_writers_never_interleave_lines(tmp_path):
    code = ("import sys; from harness.records import Record, RecordWriter;"
            "w = RecordWriter(sys.argv[1], worker='shared');"
            "[w.write([Record('size.bytes', i, extra={'pad': 'x' * 5000})]) for i in range(200)]")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)]) for _ in range(3)]
    assert all(p.wait() == 0 for p in procs)
    lines = (tmp_path / "records-shared.jsonl").read_text().splitlines()
    assert len(lines) == 600 and all(json.loads(l)["metric"] == "size.bytes" for l in lines)


# -- damaged records are reported, never silently dropped (issue 18) -------------------------

def _three(tmp_path):
    from harness.records import Record, RecordWriter

    RecordWriter(tmp_path, worker="gw0").write([Record("ppl.window", float(i), suite="default", model="m")
                                                for i in range(3)])
    return tmp_path / "records-gw0.jsonl"


def test_torn_final_line_is_skipped_with_a_message(tmp_path):
    from harness.records import load_records

    f = _three(tmp_path)
    with open(f, "a") as fh:
        fh.write('{"metric": "ppl.window", "val')  # interrupted writer: no newline
    recs = load_records(tmp_path)
    assert [r.value for r in recs] == [0.0, 1.0, 2.0]
    assert len(recs.skipped) == 1 and "records-gw0.jsonl:4: torn final line" in recs.skipped[0]


def test_bad_middle_line_is_an_error_naming_file_and_line(tmp_path):
    from harness.records import RecordsError, load_records

    f = _three(tmp_path)
    lines = f.read_text().splitlines(keepends=True)
    f.write_text(lines[0] + lines[1][: len(lines[1]) // 2] + "\n" + lines[2])
    with pytest.raises(RecordsError, match=r"records-gw0.jsonl:2: not a valid record .*--skip-bad-lines"):
        load_records(tmp_path)
    recs = load_records(tmp_path, skip_bad_lines=True)
    assert [r.value for r in recs] == [0.0, 2.0] and "records-gw0.jsonl:2: damaged line" in recs.skipped[0]


def test_every_reader_reports_a_damaged_line(tmp_path, capsys):
    from harness.cli import main
    from harness.records import load_records
    from harness.report.html import write_report
    from harness.rundir import write_run_info

    run = tmp_path / "run"
    run.mkdir()
    f = _three(run)
    write_run_info(run, run_id="run", status="complete")
    lines = f.read_text().splitlines(keepends=True)
    f.write_text(lines[0] + "garbage\n" + lines[1] + lines[2])
    for argv in (["report", str(run)], ["compare", str(run), str(run)],
                 ["baseline", "check", str(run), "--baselines", str(tmp_path / "b")],
                 ["leaderboard", str(run), "--db", str(tmp_path / "lb.sqlite")]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "records-gw0.jsonl:2: not a valid record" in err and err.count("\n") == 1, (argv, err)
    assert main(["report", str(run), "--skip-bad-lines"]) == 0
    assert "records-gw0.jsonl:2: damaged line skipped" in capsys.readouterr().err
    html = write_report(run, skip_bad_lines=True).read_text()
    assert "Damaged records: 1 line(s) skipped" in html
    assert len(load_records(run, skip_bad_lines=True)) == 3  # the garbage line skipped, every record kept


def test_corrupt_run_json_is_named_as_corrupt(tmp_path):
    from harness.rundir import run_status

    _three(tmp_path)
    (tmp_path / "run.json").write_text('{"status": "compl')
    status, why = run_status(tmp_path)
    assert status == "partial" and "run.json is corrupt" in why and "never finished" not in why
