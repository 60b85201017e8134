"""CLI: merge, durations, report/compare over several directories, --by device_class, --shard."""
from __future__ import annotations

import pytest

from harness.cli import main
from harness.records import Record, RecordWriter, load_records
from harness.rundir import read_run_info, write_run_info
from tests.test_merge import shard_dir


def err_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("argv, msg", [
    (["merge", "{tmp}/out", "{tmp}/a", "{tmp}/v2"], "different harness versions"),
    (["merge", "{tmp}/out", "{tmp}/a", "{tmp}/mine"], "different suites"),
    (["merge", "{tmp}/a", "{tmp}/b"], "already exists; pass --overwrite"),
    (["merge", "{tmp}/plain", "{tmp}/b", "--overwrite"], "not a harness run directory"),
    (["merge", "{tmp}/out", "{tmp}/nope"], "does not exist"),
    (["run", "--shard", "3/2"], "'3/2': need 1 <= I <= N"),
    (["run", "--shard", "0/0"], "'0/0': need 1 <= I <= N"),
    (["run", "--shard", "1/2", "--durations", "{tmp}/none.json"], "does not exist"),
    (["report", "{tmp}/a", "{tmp}/b"], "give -o OUT.html"),
    (["compare", "{tmp}/a,{tmp}/v2", "{tmp}/b"], "different harness versions"),
    (["durations", "{tmp}/nope"], "does not exist"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, argv, msg):
    shard_dir(tmp_path / "a")
    shard_dir(tmp_path / "b")
    shard_dir(tmp_path / "v2", version="0.2.0")
    shard_dir(tmp_path / "mine", suite="mine")
    (tmp_path / "plain").mkdir()
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    line = err_line(capsys)
    assert msg in line and "Traceback" not in line


def test_merge_report_compare_and_durations_over_several_dirs(tmp_path, capsys, monkeypatch):
    s1 = shard_dir(tmp_path / "s1", 1, 2, specs=["none", "rtn:bits=4"])
    s2 = shard_dir(tmp_path / "s2", 2, 2, specs=["rtn:bits=8", "nf4:group=64"])
    assert main(["merge", str(tmp_path / "all"), str(s1), str(s2)]) == 0
    assert "16 records, complete" in capsys.readouterr().out
    assert main(["report", str(s1), str(s2), "-o", str(tmp_path / "r.html"), "--markdown", str(tmp_path / "r.md")]) == 0
    md = (tmp_path / "r.md").read_text()
    assert all(f"| tiny | {s} |" in md for s in ("rtn:bits=4", "nf4:group=64"))
    capsys.readouterr()
    assert main(["compare", f"{s1},{s2}", str(tmp_path / "all")]) == 0
    out = capsys.readouterr().out
    assert "nf4:group=64" in out and "regressed" not in out and "only in" not in out
    monkeypatch.chdir(tmp_path)
    assert main(["durations", str(s1), str(s2)]) == 0
    assert (tmp_path / ".harness-durations.json").is_file()


def test_report_by_device_class_puts_cells_side_by_side_without_verdicts(tmp_path, capsys):
    for dc, speed in (("cuda-nvidia-h100", 2.0), ("cpu-xeon-8c", 0.9)):
        path = tmp_path / dc
        recs = []
        for spec, s in (("none", 1.0), ("rtn:bits=4", speed)):
            ctx = dict(model="tiny", spec=spec, suite="default", device_class=dc, extra={"profile": "quick"})
            recs += [Record("latency.speedup_decode", s, **ctx), Record("ppl.window", 50.0, **ctx)]
        RecordWriter(path).write(recs)
        write_run_info(path, run_id=dc, status="complete", profile="quick", harness_version="0.1.0")
    assert main(["report", "--by", "device_class", str(tmp_path / "cuda-nvidia-h100"),
                 str(tmp_path / "cpu-xeon-8c")]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert "cpu-xeon-8c: latency.speedup_decode" in header and "cuda-nvidia-h100: latency.speedup_decode" in header
    row = next(x for x in out.splitlines() if x.startswith("tiny") and "rtn:bits=4" in x)
    assert "0.9" in row and "2" in row
    assert "cuda-nvidia-h100: decode speed-up >= 1.10x: rtn:bits=4 (2x)" in out
    assert "cpu-xeon-8c: decode speed-up >= 1.10x: none; below: rtn:bits=4 (0.9x)" in out
    assert "regressed" not in out and "improved" not in out
    # compare across device classes: side by side, never a verdict
    assert main(["compare", str(tmp_path / "cpu-xeon-8c"), str(tmp_path / "cuda-nvidia-h100")]) == 0
    out = capsys.readouterr().out
    assert "device A" in out and "not comparable (device class)" in out and "regressed" not in out
    # the plain report of both says it holds one figure per cell and points to --by
    assert main(["report", str(tmp_path / "cpu-xeon-8c"), str(tmp_path / "cuda-nvidia-h100"),
                 "-o", str(tmp_path / "both.html")]) == 0
    assert "records of 2 device classes" in capsys.readouterr().err


def test_run_forwards_shard_and_durations(tmp_path, capsys, monkeypatch):
    from harness import runner

    seen = []
    out = tmp_path / "run"

    def fake_pytest(cmd, run_id=None):  # the run writes its records (an --out with records is refused)
        seen.append(cmd)
        RecordWriter(out).write([Record("ppl.window", 1.0)])
        return 0, None

    monkeypatch.setattr(runner, "run_pytest", fake_pytest)
    (tmp_path / "d.json").write_text("{}")
    assert main(["run", "--shard", "2/3", "--durations", str(tmp_path / "d.json"), "--out", str(out),
                 "--no-report"]) == 0
    assert "--harness-shard=2/3" in seen[0] and f"--harness-durations={tmp_path / 'd.json'}" in seen[0]
    assert load_records(out) and read_run_info(out) == {}
