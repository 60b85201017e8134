"""``harness search`` on the command line (harness/cli_search.py): bad input exits 2 with one
line, an impossible constraint exits 1 naming the closest points, ``--show`` and the report
mark the frontier. The model is replaced by the stub evaluator of tests/search."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from harness.cli import main

pytest.importorskip("optuna")
HERE = Path(__file__).parent / "search"
_spec = importlib.util.spec_from_file_location("search_stub", HERE / "search_stub.py")
stub = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stub)
SPACE = str(HERE / "rtn_space.yaml")


@pytest.fixture
def stubbed(monkeypatch):
    made = []

    def factory(model, **kw):
        made.append(stub.StubEvaluator(reference_delay=0.2))
        return made[-1]

    monkeypatch.setattr("harness.search.evaluator.ModelEvaluator", factory)
    return made


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("args,match", [
    (["--objectives", "size.bytes,ppl.windw"], "did you mean 'ppl.window'"),
    (["--constraint", "ppl.window=+5%"], "expected METRIC<=VALUE"),
    (["--constraint", "latency.nope<=3"], "unknown metric 'latency.nope'"),
    (["--budget", "20x"], "expected a wall time"),
    (["--budget", "0.1s"], "cannot cover one evaluation"),
    ([], "needs a stop"),
    (["--space", "missing.yaml"], "does not exist"),
    (["--trials", "0"], "--trials 0"),
    (["--constraint", "energy.j_per_token<=1"], "energy.j_per_token is not measured here (stub does not measure it)"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, stubbed, args, match):
    base = ["search", "--space", SPACE, "--out", str(tmp_path / "r"), "--no-report"]
    if not any(a in args for a in ("--budget", "--trials")) and args:
        base += ["--trials", "2"]
    assert main(base + args) == 2
    assert match in _err(capsys)
    assert not (tmp_path / "r").exists()  # nothing half-written


def test_malformed_space_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("techniques:\n  rtn: {bitz: [4]}\n")
    assert main(["search", "--space", str(bad), "--trials", "2", "--out", str(tmp_path / "r")]) == 2
    assert "unknown option 'bitz'" in _err(capsys)


def test_resume_and_show_refuse_what_is_not_a_search(tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    assert main(["search", "--resume", str(tmp_path / "plain")]) == 2
    assert "not a search run directory" in _err(capsys)
    assert main(["search", "--show", str(tmp_path / "plain")]) == 2
    assert "not a search run directory" in _err(capsys)


def test_search_show_resume_and_report(tmp_path, capsys, stubbed):
    run = tmp_path / "r"
    assert main(["search", "--space", SPACE, "--trials", "6", "--seed", "1", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "report" in out and (run / "report.html").is_file()
    html = (run / "report.html").read_text()
    assert "search frontier" in html  # rows tagged and the chart's legend
    assert main(["search", "--show", str(run)]) == 0
    shown = capsys.readouterr().out
    front = json.loads((run / "frontier.json").read_text())["frontier"]
    assert front and all(r["spec"] in shown for r in front)
    assert main(["search", "--resume", str(run), "--trials", "8", "--no-report"]) == 0
    assert len(stubbed) == 2 and len(set(stubbed[0].compressions) & set(stubbed[1].compressions)) == 0
    assert main(["search", "--resume", str(run), "--seed", "5", "--trials", "9"]) == 2
    assert "--seed" in _err(capsys)
    assert main(["search", "--space", SPACE, "--trials", "2", "--out", str(run)]) == 2
    assert "--resume" in _err(capsys)


def test_impossible_constraint_says_so_and_exits_1(tmp_path, capsys, stubbed):
    code = main(["search", "--space", SPACE, "--trials", "4", "--constraint", "size.bytes<=10",
                 "--out", str(tmp_path / "r"), "--no-report"])
    err = capsys.readouterr().err
    assert code == 1
    assert "no point met the constraint (size.bytes<=10)" in err and "misses by" in err
