"""CLI exit codes and messages of run / report / compare / baseline / leaderboard."""
from __future__ import annotations

import json

import pytest

from harness.cli import main
from harness.records import Record, RecordWriter, load_records
from harness.runner import write_run_info

DC = "cpu-test-2c"


def fake_run(path, ppl=50.0, status="complete"):
    recs = []
    for spec, p in (("none", 50.0), ("rtn:bits=4", ppl)):
        ctx = dict(model="tiny", spec=spec, technique=spec.split(":")[0], suite="default", device_class=DC,
                   run_id=path.name, storage="packed")
        recs += [Record("ppl.window", p, **ctx), Record("size.bytes", 100.0, **ctx)]
    RecordWriter(path).write(recs)
    write_run_info(path, run_id=path.name, status=status, started=1.0)
    return path


def err_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_help_lists_commands_with_examples(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for c in ("run", "report", "compare", "baseline", "leaderboard"):
        assert c in out
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "harness run default -- -k" in capsys.readouterr().out


@pytest.mark.parametrize("argv, msg", [
    (["report", "{tmp}/nope"], "does not exist"),
    (["report", "{tmp}/empty"], "no records-*.jsonl"),
    (["compare", "{tmp}/empty", "{tmp}/empty"], "no records"),
    (["baseline", "update"], "needs RUN_DIR"),
    (["baseline", "show", "--baselines", "{tmp}/none"], "no baseline files"),
    (["leaderboard", "--db", "{tmp}/lb.sqlite", "--metric", "ppl.windw"], "did you mean 'ppl.window'"),
    (["run", "no-such-suite"], "unknown suite 'no-such-suite'"),
    (["run", "default", "--bogus"], "unknown argument '--bogus'"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, argv, msg):
    (tmp_path / "empty").mkdir()
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    line = err_line(capsys)
    assert msg in line and "Traceback" not in line


def test_report_and_markdown(tmp_path, capsys):
    run = fake_run(tmp_path / "r")
    assert main(["report", str(run), "-o", str(tmp_path / "x.html"), "--markdown", str(tmp_path / "s.md")]) == 0
    assert (tmp_path / "x.html").is_file() and "| tiny | rtn:bits=4 |" in (tmp_path / "s.md").read_text()
    capsys.readouterr()
    assert main(["report", str(run), "--markdown"]) == 0
    assert capsys.readouterr().out.startswith("## harness run r")


def test_compare_exit_codes(tmp_path, capsys):
    a, b = fake_run(tmp_path / "a"), fake_run(tmp_path / "b", ppl=60.0)
    assert main(["compare", str(a), str(b), "--html", str(tmp_path / "c.html")]) == 0
    assert "regressed" in capsys.readouterr().out
    assert main(["compare", str(a), str(b), "--fail-on-regression"]) == 1
    assert main(["compare", str(a), str(a), "--fail-on-regression"]) == 0


def test_baseline_update_check_show(tmp_path, capsys):
    bl = tmp_path / "baselines"
    partial = fake_run(tmp_path / "p", status="partial")
    assert main(["baseline", "update", str(partial), "--baselines", str(bl)]) == 2
    assert "partial run" in err_line(capsys)
    good = fake_run(tmp_path / "g")
    assert main(["baseline", "update", str(good), "--baselines", str(bl)]) == 0
    f = bl / "default" / f"{DC}.json"
    assert json.loads(f.read_text())["source"]["run_id"] == "g"
    assert main(["baseline", "show", "--baselines", str(bl)]) == 0
    assert main(["baseline", "check", str(good), "--baselines", str(bl)]) == 0
    worse = fake_run(tmp_path / "w", ppl=60.0)
    capsys.readouterr()
    assert main(["baseline", "check", str(worse), "--baselines", str(bl)]) == 1
    assert "ppl.window regressed: baseline 50, measured 60" in capsys.readouterr().out
    f.write_text(f.read_text().replace('"lower"', '"sideways"', 1))  # hand-broken baseline
    assert main(["baseline", "check", str(worse), "--baselines", str(bl)]) == 2
    assert "direction: 'sideways' is not 'higher' or 'lower'" in err_line(capsys)


def test_leaderboard_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["leaderboard"]) == 2
    assert "no run directories" in err_line(capsys)
    fake_run(tmp_path / "reports" / "r1")
    assert main(["leaderboard", "--html", "lb.html"]) == 0
    out = capsys.readouterr().out
    assert "by cost-efficiency score" in out and (tmp_path / "lb.html").is_file()
    assert (tmp_path / "reports" / "leaderboard.sqlite").is_file()


SUITE = """
def test_a(bench):
    bench.record("ppl.window", 12.0)
"""


def test_run_end_to_end_and_exit_codes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "test_mine.py").write_text(SUITE)
    code = main(["run", "mine", "--out", "runs/one", "--", "-q", "-p", "no:cacheprovider"])
    out = capsys.readouterr().out
    assert code == 0
    assert (tmp_path / "runs" / "one" / "report.html").is_file()
    assert "harness run: report runs/one/report.html" in out
    assert [r.value for r in load_records(tmp_path / "runs" / "one")] == [12.0]
    assert (tmp_path / "runs" / "one" / "summary.md").is_file()


@pytest.mark.parametrize("pytest_exit, code, msg", [(5, 5, "pytest selected no tests (exit 5)"),
                                                    (0, 2, "no records were written"),
                                                    (4, 4, "no records were written")])
def test_run_never_passes_silently(tmp_path, capsys, monkeypatch, pytest_exit, code, msg):
    """Empty selection, or a pytest run that wrote nothing (usage error, ...), is an error."""
    from harness import runner

    monkeypatch.setattr(runner, "run_pytest", lambda cmd, run_id=None: pytest_exit)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "test_mine.py").write_text(SUITE)
    assert main(["run", "mine", "--out", "runs/x", "--", "-k", "nothing"]) == code
    assert msg in capsys.readouterr().err
