"""Every metric that feeds a verdict gives the same value at eval batch 1 and 8.

``ppl.window``, ``fidelity.kl`` / ``fidelity.top1`` (through the evaluation path, with
``EvalConfig.batch``) and the bundled task's ``acc`` / ``acc_norm`` (lm-eval, whose batches
pad) of the quick-suite spec of every default-suite technique on harness-tiny agree within
1e-4 relative, or the technique declares why they cannot (``Technique.batch_dependence``),
its records say so (``extra.batch_invariant``) and the verdict's note names it.
``dynamic-int8:act=per-tensor`` is the known case: one activation scale per call, shared by
the windows of a batch. A figure that moves with the batch is not a measurement of the model.

Budget: 8 windows of 64 tokens, 16 task items, 4 calibration windows of 64 tokens.
"""
from __future__ import annotations

import functools

import pytest
import torch

from harness.baselines.file import MetricBaseline, parse_tolerance
from harness.baselines.judge import compare
from harness.config import EvalConfig
from harness.evaluation import EvalContext, compress_model, measure_result
from harness.records import Record
from harness.suite import technique_params

METRICS = ["ppl.window", "fidelity.kl", "fidelity.top1"]
TASK = "harness_cloze"
BATCHES = (1, 8)
REL = 1e-4


def _specs() -> list:
    out = []
    for p in technique_params(quick=True):
        if any(m.name in ("skip", "gpu") for m in p.marks):
            continue  # no suite spec, or CUDA-only (bnb-*, fp8): nothing to run on CPU
        out.append(p.values[0])
    return out + ["dynamic-int8:act=per-tensor"]  # the known case, labelled


@functools.lru_cache(maxsize=1)
def _calibration(tokenizer):
    from harness.calibration import get_calibration

    return get_calibration(tokenizer, n=4, seq_len=64, seed=0)


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= REL * max(abs(a), abs(b)) + 1e-12


def _figures(lm, res, batch: int) -> tuple[dict[str, float], list[Record]]:
    from harness.measure.tasks import run_tasks

    ctx = EvalContext(eval=EvalConfig(window=64, max_tokens=512, batch=batch))
    recs = measure_result(lm, res, METRICS, ctx, deltas=False)
    assert all(r.value is not None for r in recs), [(r.metric, r.reason) for r in recs]
    got = {r.metric: float(r.value) for r in recs}
    task = run_tasks(res.model, lm.tokenizer, [TASK], batch_size=batch, limit=16)[TASK]
    got.update({f"task.{TASK}.{k}": task[k] for k in ("acc", "acc_norm") if task[k] is not None})
    return got, recs


@pytest.fixture
def no_env_probe(monkeypatch):
    """lm-eval's simple_evaluate collects torch's environment report (pip subprocesses, half
    of a 16-item task call) into results the harness does not read."""
    import lm_eval.evaluator

    monkeypatch.setattr(lm_eval.evaluator, "add_env_info", lambda results: None)


@pytest.mark.slow  # the whole parametrization: about 95 s on 2 shared cores
@pytest.mark.parametrize("spec", _specs())
def test_verdict_metrics_do_not_depend_on_the_eval_batch(tiny_lm, spec, one_thread, no_env_probe):
    res = compress_model(tiny_lm, spec, calibration=lambda: _calibration(tiny_lm.tokenizer))
    (one, recs1), (eight, recs8) = (_figures(tiny_lm, res, b) for b in BATCHES)
    moved = {m: (one[m], eight[m]) for m in one if not _close(one[m], eight[m])}
    why = res.batch_dependence
    if why is None:
        assert not moved, f"{spec}: figures move with the eval batch (1 vs 8): {moved}"
        assert all("batch_invariant" not in r.extra for r in recs1 + recs8)
        return
    # a technique that says it depends on the batching: every figure carries the label
    for r in recs1 + recs8:
        assert r.extra["batch_invariant"] is False and r.extra["batch_dependence"] == why, r.extra
    assert {r.extra["eval_batch"] for r in recs8} == {8}
    assert moved, f"{spec} declares a batch dependence ({why}) but nothing moved: drop the label?"


def test_per_tensor_dynamic_int8_is_the_labelled_case():
    import harness

    assert "batch" in harness.make("dynamic-int8:act=per-tensor").batch_dependence
    assert harness.make("dynamic-int8").batch_dependence is None
    assert harness.make("prune-neurons:fraction=0.25 + dynamic-int8:act=per-tensor").batch_dependence.startswith(
        "stage dynamic-int8:act=per-tensor: one activation scale per call")
    assert harness.make("prune-neurons:fraction=0.25 + dynamic-int8").batch_dependence is None


@pytest.mark.parametrize("measured", [100.0, 180.0])
def test_a_verdict_on_a_batch_dependent_figure_says_so(measured):
    why = "one activation scale per call, shared by the batch"
    base = MetricBaseline(100.0, False, parse_tolerance("1%"))
    plain = compare(Record("ppl.window", measured, model="m", spec="s"), base)
    labelled = compare(Record("ppl.window", measured, model="m", spec="s",
                              extra={"batch_invariant": False, "batch_dependence": why, "eval_batch": 8}), base)
    assert labelled.status == plain.status  # judged all the same
    assert "depends on the eval batching (measured at batch 8)" in labelled.note and why in labelled.note
    assert "batching" not in plain.note
    assert compare(Record.na("ppl.window", "not run", extra={"batch_invariant": False}), base).status == "missing"


def test_fidelity_reads_the_eval_batch(tiny_lm, monkeypatch):
    """The fidelity producer batches as ``EvalConfig.batch`` says (it used a fixed 8)."""
    from harness.measure import accuracy

    seen = []
    real = accuracy._batches
    monkeypatch.setattr(accuracy, "_batches", lambda x, b: seen.append(b) or real(x, b))
    ctx = EvalContext(eval=EvalConfig(window=64, max_tokens=128, batch=3), reference=tiny_lm.model)
    with torch.no_grad():
        measure_result(tiny_lm, tiny_lm.model, ["fidelity.kl"], ctx, deltas=False)
    assert seen and set(seen) == {3}
