"""CLI exit codes and messages of run / report / compare / baseline / leaderboard."""
from __future__ import annotations

import json

import pytest

from harness.cli import main
from harness.records import Record, RecordWriter, load_records
from harness.rundir import write_run_info

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

    monkeypatch.setattr(runner, "run_pytest", lambda cmd, run_id=None: (pytest_exit, None))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "test_mine.py").write_text(SUITE)
    assert main(["run", "mine", "--out", "runs/x", "--", "-k", "nothing"]) == code
    assert msg in capsys.readouterr().err


SLOW_SUITE = """
import time

def test_a_fast(bench):
    bench.record("ppl.window", 12.0)

def test_b_slow(bench):
    time.sleep(120)
"""


def _live(marker: str) -> list[int]:
    import psutil

    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(marker in str(a) for a in (p.info["cmdline"] or [])):
                found.append(p.info["pid"])
        except psutil.Error:
            pass
    return found


@pytest.mark.parametrize("sig, code, inherited_ignore", [("SIGTERM", 143, False), ("SIGINT", 130, False),
                                                        ("SIGINT", 130, True)])
def test_signal_to_harness_run_stops_the_child_and_keeps_a_partial_run(tmp_path, sig, code, inherited_ignore):
    """CI time-outs signal only the process they started: it must reach pytest, leave a
    partial run.json with what was recorded, a report, and no process behind. Also when
    harness run was started with SIGINT ignored (a background job of a non-interactive
    shell): the pytest child must not inherit the ignore."""
    import os
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "test_slow.py").write_text(SLOW_SUITE)
    out = tmp_path / "runs" / f"sig-{sig}-{inherited_ignore}"
    cli = "import sys; from harness.cli import main; sys.exit(main())"
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if inherited_ignore else (
        lambda: signal.signal(signal.SIGINT, signal.default_int_handler))
    proc = subprocess.Popen([sys.executable, "-c", cli, "run", "slow", "--out", str(out), "--",
                             "-q", "-p", "no:cacheprovider"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=ignore)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:  # test_a's outcome on disk: test_b sleeps
        if any("test_a_fast" in f.read_text() for f in out.glob("outcomes-*.jsonl")):
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("the run never started: " + proc.communicate()[1][-2000:])
    time.sleep(0.5)
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err[-2000:]
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "partial", info
    assert [r.value for r in load_records(out)] == [12.0]
    assert (out / "report.html").is_file()
    assert _live(str(out)) == [], "a process of the run outlived harness run"
    assert os.path.isdir(out)


@pytest.mark.parametrize("argv, msg", [
    (["--model", "no-such-model"], "unknown model 'no-such-model'"),
    (["--technique", "rtn:bits=5"], "bits=5 is not supported"),
    (["--technique", "nonesuch"], "unknown technique 'nonesuch'"),
])
def test_bad_model_or_technique_fails_before_pytest(tmp_path, capsys, monkeypatch, argv, msg):
    monkeypatch.chdir(tmp_path)
    code = main(["run", "--out", "runs/bad", *argv])
    assert code == 2 and msg in err_line(capsys)
    assert not (tmp_path / "runs").exists()


def test_baseline_update_from_several_runs_keeps_each_runs_value(tmp_path, capsys):
    bl = tmp_path / "baselines"
    runs = [fake_run(tmp_path / n, ppl=p) for n, p in (("a", 50.0), ("b", 52.0), ("c", 51.0))]
    assert main(["baseline", "update", *map(str, runs), "--baselines", str(bl)]) == 0
    data = json.loads((bl / "default" / f"{DC}.json").read_text())
    assert data["source"]["run_id"] == "a+b+c"
    m = next(e for e in data["entries"] if e["spec"] == "rtn:bits=4")["metrics"]["ppl.window"]
    assert m["value"] == 51.0 and m["runs"] == [50.0, 52.0, 51.0]
    other = fake_run(tmp_path / "d")
    write_run_info(other, run_id="d", status="complete", started=1.0, fingerprint={"cpu": "B", "torch": "2"})
    write_run_info(runs[0], run_id="a", status="complete", started=1.0, fingerprint={"cpu": "A", "torch": "2"})
    capsys.readouterr()
    assert main(["baseline", "update", str(runs[0]), str(other), "--baselines", str(bl)]) == 2
    assert "ran on another host" in err_line(capsys)
    assert main(["baseline", "check", str(runs[0]), str(other), "--baselines", str(bl)]) == 2
    assert "ran on another host" in err_line(capsys)


def test_baseline_check_judges_repeated_runs_as_their_median(tmp_path, capsys):
    """Three runs whose perplexities are 50, 58 and 51 against a baseline of 50: the median
    run (51, +2%) is judged, not the outlier, and the note says how many runs it rests on."""
    bl = tmp_path / "baselines"
    assert main(["baseline", "update", str(fake_run(tmp_path / "base", ppl=50.0)), "--baselines", str(bl)]) == 0
    runs = [fake_run(tmp_path / n, ppl=p) for n, p in (("a", 50.0), ("b", 58.0), ("c", 51.0))]
    capsys.readouterr()
    assert main(["baseline", "check", *map(str, runs), "--baselines", str(bl)]) == 1
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "ppl.window" in x and "rtn:bits=4" in x)
    assert "measured 51" in line and "regressed" in line, out


def test_run_into_a_directory_that_holds_records_is_refused(tmp_path, capsys, monkeypatch):
    """Records are appended: a second run in the same --out would be judged with the first."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs" / "r1"
    out.mkdir(parents=True)
    (out / "records-main.jsonl").write_text("")
    assert main(["run", "--quick", "--out", str(out)]) == 2
    line = err_line(capsys)
    assert "already holds a run's records" in line and "r1" in line
    assert sorted(p.name for p in out.iterdir()) == ["records-main.jsonl"]  # nothing written


def test_run_technique_option_selects_specs(tmp_path, capsys, monkeypatch):
    from harness.suite import technique_params

    ids = [p.id for p in technique_params(True, ["rtn:bits=8", "magnitude:sparsity=0.5"])]
    assert ids == ["none", "rtn:bits=8", "magnitude:sparsity=0.5"]
    with pytest.raises(ValueError, match="unknown technique"):
        technique_params(True, ["nope"])


def test_crafted_suite_name_in_records_writes_nothing_outside_the_root(tmp_path, capsys):
    run = tmp_path / "run"
    ctx = dict(model="tiny", spec="none", technique="none", device_class=DC, run_id="run")
    RecordWriter(run).write([Record("ppl.window", 1.0, suite="../../escaped", **ctx),
                             Record("ppl.window", 1.0, suite="default", **ctx)])
    write_run_info(run, run_id="run", status="complete")
    root = tmp_path / "deep" / "baselines"
    code = main(["baseline", "update", str(run), "--baselines", str(root)])
    assert code == 2 and "not a safe file name" in err_line(capsys)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.json")) == ["run/run.json"]
    RecordWriter(run).write([Record("ppl.window", 1.0, suite="default", **{**ctx, "device_class": "../x"})])


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", "", "x" * 200, "/abs"])
def test_safe_component_refuses_path_like_names(bad):
    from harness.paths import inside, safe_component

    with pytest.raises(ValueError, match="not a safe file name"):
        safe_component(bad, "suite")
    with pytest.raises(ValueError, match="escapes"):
        inside("/tmp/root", "..", "etc")


COUNTED_SUITE = """
from pathlib import Path

def test_a(bench):
    p = Path("n.txt")
    k = int(p.read_text()) if p.exists() else 0
    p.write_text(str(k + 1))
    bench.record("ppl.window", [12.0, 15.0, 12.1, 12.0][k % 4])
"""


def test_repeat_gates_the_median_run_not_each_repeat(tmp_path, capsys, monkeypatch):
    """Baseline 12.0; three repeats measure 15.0 (an outlier that alone regresses), 12.1 and
    12.0: the merged run is judged on its median run, 12.1, inside the 1% tolerance."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "test_counted.py").write_text(COUNTED_SUITE)
    quiet = ["--", "-q", "-p", "no:cacheprovider"]
    assert main(["run", "counted", "--out", "runs/base", "--no-report", *quiet]) == 0
    assert main(["baseline", "update", "runs/base"]) == 0
    capsys.readouterr()
    assert main(["run", "counted", "--repeat", "3", "--gate", "--out", "runs/rep", *quiet]) == 0
    out = capsys.readouterr().out
    assert "3 repeats merged into runs/rep" in out and "harness run: report runs/rep/report.html" in out
    assert sorted(r.value for r in load_records(tmp_path / "runs" / "rep")) == [12.0, 12.1, 15.0]
    assert sorted(p.name for p in (tmp_path / "runs" / "rep.repeats").iterdir()) == ["1", "2", "3"]
    assert main(["baseline", "check", "runs/rep.repeats/1"]) == 1  # the outlier alone
    assert main(["baseline", "check", "runs/rep"]) == 0
    capsys.readouterr()
    assert main(["run", "counted", "--repeat", "0", "--out", "runs/zero", *quiet]) == 2
    assert "--repeat 0 must be >= 1" in err_line(capsys)
    assert main(["run", "counted", "--repeat", "2", "--out", "runs/rep", *quiet]) == 2
    assert "already holds a run's records" in err_line(capsys)
