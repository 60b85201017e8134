"""Task accuracy through lm-eval: the bundled offline cloze task and the task metrics."""
from __future__ import annotations

import copy

import pytest
import torch

from harness.config import EvalConfig
from harness.evaluation import EvalContext, evaluate
from harness.measure.tasks import check_tasks, run_tasks
from harness.metrics import METRICS
from harness.tasks.cloze_task import items


def test_cloze_items_are_deterministic_and_well_formed():
    a, b = items(), items()
    assert a == b and len(a) >= 150
    for d in a:
        assert len(d["choices"]) == 4 and len(set(d["choices"])) == 4 and 0 <= d["label"] < 4
        assert d["context"] and not d["context"].endswith(" ")
    # labels are spread over the positions (a position bias would reward a biased model)
    counts = [sum(d["label"] == i for d in a) for i in range(4)]
    assert min(counts) > len(a) / 8, counts


def _damaged(model: torch.nn.Module) -> torch.nn.Module:
    """The same model with every block weight drowned in noise: a known-worse model."""
    bad = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in bad.named_parameters():
            if ".layers." in name and p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=g) * 30 * p.std())
    return bad


def test_a_better_model_scores_higher_on_the_bundled_task(tiny_lm):
    from harness.measure.accuracy import perplexity_window

    damaged = _damaged(tiny_lm.model)
    ppl = [perplexity_window(m, tiny_lm.tokenizer, max_tokens=512) for m in (tiny_lm.model, damaged)]
    assert ppl[0] * 10 < ppl[1]  # the premise: the damaged model is far worse at language modelling
    good = run_tasks(tiny_lm.model, tiny_lm.tokenizer, ["harness_cloze"], limit=96)["harness_cloze"]
    bad = run_tasks(damaged, tiny_lm.tokenizer, ["harness_cloze"], limit=96)["harness_cloze"]
    assert good["n"] == bad["n"] == 96
    # the trained model beats chance (25%) clearly; the damaged one falls back to it (measured 0.52 vs 0.23)
    assert good["acc"] > 0.25 + 3 * good["acc_stderr"]
    assert good["acc"] > bad["acc"] + 2 * good["acc_stderr"], (good["acc"], bad["acc"])
    assert 0 < good["acc_stderr"] < 0.06 and good["acc_norm_stderr"] > 0


def test_task_metrics_come_back_as_records_with_stderr(tiny_lm):
    recs = evaluate(tiny_lm, metrics=["task.harness_cloze.acc", "task.harness_cloze.acc_norm"],
                    ctx=EvalContext(eval=EvalConfig(max_tokens=1024)))
    assert [r.metric for r in recs] == ["task.harness_cloze.acc", "task.harness_cloze.acc_norm"]
    for r in recs:
        assert 0 <= r.value <= 1 and r.n == len(items()) and r.extra["task"] == "harness_cloze"
        assert r.spread["stderr"] == r.extra["stderr"] > 0 and r.samples["items"] == [r.n]


def test_any_task_name_has_registered_metrics():
    m = METRICS.get("task.some_task.acc_norm")  # written by --lm-eval-tasks some_task, read anywhere
    assert m.higher_is_better and m.producer == "lm_eval_tasks" and "task.some_task.acc_norm" in METRICS
    assert "task.some_task.f1" not in METRICS


@pytest.mark.slow  # indexes lm-eval's own tasks
def test_an_unknown_task_is_one_line_with_close_matches():
    with pytest.raises(ValueError, match="unknown lm-eval task 'harnes_cloze'; did you mean 'harness_cloze'"):
        check_tasks(["harnes_cloze"])


@pytest.mark.slow
def test_a_task_whose_dataset_is_not_cached_names_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    with pytest.raises(ValueError, match=r"'arc_easy': its dataset 'allenai/ai2_arc', 'ARC-Easy' is not in the "
                                         r"local datasets cache.*load_dataset") as e:
        check_tasks(["arc_easy"])
    assert "\n" not in str(e.value)
