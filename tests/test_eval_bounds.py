"""Bounded evaluation: --max-tokens, --split, --text, --calibration-text and
--lm-eval-tasks on `harness eval`, the matching suite options, and EvalConfig."""
from __future__ import annotations

import hashlib
import json

import pytest

from harness.calibration import get_calibration
from harness.cli import main
from harness.config import EvalConfig, SpecError

PROSE = ("The river bends twice before it reaches the old mill, and the miller's children "
         "count the boats that pass under the bridge each morning. ") * 40


def _records(capsys) -> dict:
    return {r["metric"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}


def test_eval_config_validates_the_new_fields():
    assert EvalConfig(max_tokens=128, split="test").split == "test"
    for kw, match in [({"max_tokens": 0}, "max_tokens=0 must be >= 1"), ({"split": "dev"}, "not a bundled split"),
                      ({"max_tokens": 64}, "must be >= window=128")]:
        with pytest.raises(SpecError, match=match):
            EvalConfig(**kw)


def test_max_tokens_and_split_bound_and_choose_what_is_scored(capsys):
    assert main(["eval", "harness-tiny", "-m", "ppl.window", "--max-tokens", "512", "--split", "test",
                 "--json"]) == 0
    r = _records(capsys)["ppl.window"]
    assert r["n"] == 4 and r["extra"]["split"] == "test" and r["extra"]["max_tokens"] == 512  # 4 windows of 128
    assert main(["eval", "harness-tiny", "-m", "ppl.window", "--max-tokens", "512", "--json"]) == 0
    assert _records(capsys)["ppl.window"]["value"] != r["value"]  # validation is other text


def test_text_file_is_scored_and_named_by_its_sha256(tmp_path, capsys):
    f = tmp_path / "prose.txt"
    f.write_text(PROSE)
    assert main(["eval", "harness-tiny", "-m", "ppl.window,ppl.lm_eval", "--text", str(f), "--max-tokens", "256",
                 "--json"]) == 0
    recs = _records(capsys)
    w = recs["ppl.window"]
    assert w["extra"]["text_sha256"] == hashlib.sha256(f.read_bytes()).hexdigest() and w["n"] == 2
    assert w["extra"]["split"] == "text" and w["value"] > 1
    assert recs["ppl.lm_eval"]["value"] is None and "--text" in recs["ppl.lm_eval"]["reason"]


def test_calibration_text_draws_the_windows_from_the_file(tmp_path, tiny_lm):
    f = tmp_path / "cal.txt"
    f.write_text(PROSE)
    cal = get_calibration(tiny_lm.tokenizer, n=4, seq_len=32, text_file=str(f))
    text_ids = set(tiny_lm.tokenizer(PROSE, add_special_tokens=False)["input_ids"])
    assert set(cal.input_ids.flatten().tolist()) <= text_ids
    assert cal.describe()["calibration_split"] == "text"
    assert cal.describe()["calibration_text_sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
    (tmp_path / "short.txt").write_text("too short")
    with pytest.raises(SpecError, match="too few for seq_len=32"):
        get_calibration(tiny_lm.tokenizer, n=4, seq_len=32, text_file=str(tmp_path / "short.txt"))


@pytest.mark.parametrize("argv,match", [
    (["--max-tokens", "0"], "max_tokens=0 must be >= 1"),
    (["--text", "/no/such/file.txt"], "text file '/no/such/file.txt' cannot be read"),
    (["--calibration-text", "/no/such/cal.txt"], "cannot be read"),
    (["--lm-eval-tasks", ","], "--lm-eval-tasks is empty"),
])
def test_bad_bounds_are_one_line_exit_2(capsys, argv, match):
    assert main(["eval", "harness-tiny", "-m", "ppl.window", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err


def test_lm_eval_tasks_adds_acc_acc_norm_and_recovery_records(capsys):
    assert main(["eval", "harness-tiny", "-m", "size.bytes", "--lm-eval-tasks", "harness_cloze", "--json"]) == 0
    recs = _records(capsys)
    assert set(recs) == {"size.bytes", "task.harness_cloze.acc", "task.harness_cloze.acc_norm",
                         "task.harness_cloze.recovery"}
    assert 0.25 < recs["task.harness_cloze.acc"]["value"] < 1 and recs["task.harness_cloze.acc"]["extra"]["stderr"]
    assert recs["task.harness_cloze.recovery"]["value"] == 1.0  # no technique: the model is the reference


def test_suite_options_reach_the_eval_context_and_calibration(tmp_path):
    from harness.options import Options
    from harness.plugin import _eval_options
    from harness.session import Session

    f = tmp_path / "t.txt"
    f.write_text(PROSE)
    opts = {"harness_max_tokens": 256, "harness_split": None, "harness_text": str(f),
            "harness_calibration_text": str(f), "harness_lm_eval_tasks": "harness_cloze"}
    ev = _eval_options(opts.get)
    assert ev.task_metrics == ["task.harness_cloze.acc", "task.harness_cloze.acc_norm",
                                  "task.harness_cloze.recovery"]
    s = Session(Options(out=tmp_path / "o", run_id="r", baselines=tmp_path / "b", quick=True, eval=ev))
    cfg = s.eval_context().eval
    assert (cfg.max_tokens, cfg.text, cfg.split) == (256, str(f), "validation")
    with pytest.raises(pytest.UsageError, match="max_tokens=0 must be >= 1"):
        _eval_options({**opts, "harness_max_tokens": 0}.get)
    with pytest.raises(pytest.UsageError, match="cannot be read"):
        _eval_options({**opts, "harness_calibration_text": str(tmp_path / "nope")}.get)
