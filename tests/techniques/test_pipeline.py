"""Pipelines: stage splitting, recipes, targets, order rules, stacked formats that save,
reload and count their bytes exactly, and per-stage figures in the records."""
from __future__ import annotations

import copy
import os

import pytest
import torch
from conftest import ids, random_llama
from torch import nn

from harness.checkpoint import load_compressed, save_compressed
from harness.config import SpecError
from harness.layers.exec import reference_forward
from harness.layers.quant import QuantLinear
from harness.layers.stacked import LowRankQuantLinear, SparseQuantLinear, quant_bytes, sparse_quant_bytes
from harness.techniques import compress, make
from harness.techniques.pipeline import Pipeline, observe_stages, split_stages
from harness.techniques.spec import canonical_spec

BLOCK = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _linears(model):
    return {n: m for n, m in model.named_modules() if n.split(".")[-1] in BLOCK}


def _logits(model, x):
    with torch.no_grad():
        return model(input_ids=x).logits


# -- spec strings and recipes ------------------------------------------------------------------
def test_plus_splits_stages_only_before_a_technique_name():
    spec = "prune-neurons:fraction=0.25 + distill:loss=logits+hidden,steps=3 + gptq:bits=4,group=64"
    assert split_stages(spec) == ["prune-neurons:fraction=0.25", "distill:loss=logits+hidden,steps=3",
                                  "gptq:bits=4,group=64"]
    assert split_stages("magnitude+rtn:bits=4") == ["magnitude", "rtn:bits=4"]
    assert split_stages("distill:loss=logits+hidden") == ["distill:loss=logits+hidden"]
    t = make(spec)
    assert isinstance(t, Pipeline) and [s.name for s in t.stages] == ["prune-neurons", "distill", "gptq"]
    assert t.stages[1].config.loss == "logits+hidden"
    assert make("distill:loss=logits+hidden").name == "distill"  # one stage: the technique itself


def test_canonical_spec_joins_the_stages_and_round_trips():
    t = make("magnitude:sparsity=0.50 +  rtn:bits=4,group=64,sym=true")
    assert canonical_spec(t) == "magnitude:sparsity=0.5 + rtn:group=64"  # defaults are left out
    assert make(canonical_spec(t)).config == t.config
    assert t.storage == "packed" and t.needs_calibration is False
    assert make("magnitude + gptq:bits=4").needs_calibration is True


@pytest.mark.parametrize("spec,match", [
    ("magnitude + rtnn:bits=4", "did you mean 'rtn'"),
    ("magnitude + ", "an empty stage"),
    ("gptq:bits=3 + distill:steps=2", "fine-tunes weights after stage 1 (gptq:bits=3) quantized them"),
    ("rtn:bits=4 + recover", "use qat"),
    ("rtn:bits=4 + magnitude", "prunes after"),
    ("rtn:bits=4 + prune-neurons", "prunes after"),
    ("rtn:bits=4 + svd", "factor first, then quantize"),
    ("rtn:bits=4 + gptq:bits=8", "already quantized"),
    ("magnitude + svd", "sparse + low-rank has no compact stacked format"),
    ("svd + magnitude", "sparse + low-rank has no compact stacked format"),
    ("magnitude + nf4", "sparse + nf4 has no compact stacked format"),
    ("magnitude:sparsity=0.5 + rtn:bits=2", "would save nothing"),
    ("magnitude + distill", "pruned zeros would grow back"),
    ("svd + awq:bits=4", "low-rank + awq has no stacked format"),
    ("drop-layers + distill:loss=logits+hidden", "loss=hidden after stage 1 (drop-layers) removed blocks"),
    ("magnitude + prune-neurons", "put the structural stage first"),
    ("quant-embed + quant-embed:bits=8", "already quantized"),
])
def test_a_stage_that_would_undo_an_earlier_one_is_refused(spec, match):
    with pytest.raises(SpecError) as e:
        make(spec)
    assert match in str(e.value) and "\n" not in str(e.value)


def test_allowed_orders_parse():
    for spec in ("prune-neurons:fraction=0.25 + distill:steps=2 + gptq:bits=4,group=64",
                 "magnitude:sparsity=0.5 + recover:steps=2 + rtn:bits=4", "svd + rtn:bits=8",
                 "gptq:bits=3 + quant-embed:bits=4 + kv-cache", "qat:bits=4 + quant-embed"):
        assert isinstance(make(spec), Pipeline), spec


@pytest.mark.parametrize("argv,match", [
    (["eval", "harness-tiny", "-t", "rtn:bits=4 + distill:steps=2"], "fine-tunes weights after"),
    (["eval", "harness-tiny", "-t", "magnitude + wandaa:sparsity=0.5"], "did you mean 'wanda'"),
    (["eval", "harness-tiny", "-t", "missing-recipe.yaml"], "recipe file 'missing-recipe.yaml' does not exist"),
])
def test_cli_pipeline_errors_are_one_line_and_exit_2(capsys, argv, match):
    from harness.cli import main

    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and match in err and err.count("\n") == 1


# -- running pipelines -------------------------------------------------------------------------
def test_targets_restrict_each_stage_to_its_layers():
    model = random_llama()
    res = compress(model, "rtn:bits=4,group=32,targets=model.layers.0.mlp.* + rtn:bits=8,targets=model.layers.1.*")
    lin = _linears(res.model)
    assert {n for n, m in lin.items() if isinstance(m, QuantLinear) and m.bits == 4} == {
        f"model.layers.0.mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj")}
    assert all(m.bits == 8 for n, m in lin.items() if n.startswith("model.layers.1."))
    assert all(type(m) is nn.Linear for n, m in lin.items() if n.startswith("model.layers.0.self_attn"))


def test_targets_a_stage_cannot_honour_or_that_match_nothing_are_errors():
    with pytest.raises(SpecError, match="does not honour targets: it changed model.layers.1"):
        compress(random_llama(), "prune-neurons:fraction=0.25,targets=model.layers.0.*")
    with pytest.raises(SpecError, match="targets pattern 'model.blocks.*' matches no layer"):
        compress(random_llama(), "rtn:bits=4,targets=model.blocks.*")


def test_a_quantizer_with_nothing_left_to_quantize_is_an_error():
    with pytest.raises(SpecError, match="finds no plain linear layer left"):
        compress(random_llama(), "rtn:bits=4,targets=model.layers.* + rtn:bits=8,targets=model.layers.0.*")


def test_sparse_then_quantized_is_stored_as_kept_codes_and_reloads(tmp_path):
    model = random_llama()
    x = ids()
    res = compress(copy.deepcopy(model), "magnitude:sparsity=0.75 + rtn:bits=4,group=32")
    layers = _linears(res.model)
    assert all(isinstance(m, SparseQuantLinear) for m in layers.values())
    # the same function as pruning to zeros, then quantizing densely (RTN keeps zeros exact)
    ref = compress(copy.deepcopy(model), "magnitude:sparsity=0.75,format=dense").model
    ref = compress(ref, "rtn:bits=4,group=32").model
    for name, m in layers.items():  # exactly the dense codes' weights, zeros where pruned
        assert torch.equal(m.dense_weight(), ref.get_submodule(name).dequantize())
    with reference_forward():  # the same torch path for both (QuantLinear would run the int4 kernel)
        assert torch.allclose(_logits(res.model, x), _logits(ref, x), atol=1e-5)
    for m in layers.values():  # honest bytes: mask + kept codes + scales, below dense codes
        stored = sum(t.numel() * t.element_size() for k, t in m.state_dict().items() if k != "bias")
        assert stored == sparse_quant_bytes(m.out_features, m.in_features, m.nnz, 4, 32, True)
        assert stored < quant_bytes(m.out_features, m.in_features, 4, 32, True)
        assert m.nnz == m.out_features * m.in_features // 4
    save_compressed(res.model, tmp_path / "sq")
    assert os.path.getsize(tmp_path / "sq" / "model.safetensors") == _serialized(res.model)
    assert torch.equal(_logits(load_compressed(tmp_path / "sq"), x), _logits(res.model, x))


def test_lowrank_then_quantized_stores_packed_factors_and_reloads(tmp_path):
    model = random_llama()
    x = ids()
    lr = compress(copy.deepcopy(model), "svd:rank=8").model
    res = compress(copy.deepcopy(model), "svd:rank=8 + rtn:bits=8")
    layers = _linears(res.model)
    assert all(isinstance(m, LowRankQuantLinear) and m.rank == 8 and m.bits == 8 for m in layers.values())
    for m in layers.values():  # two int8 factor matrices, one float16 scale per row
        assert m.a_qweight.numel() + m.b_qweight.numel() == 8 * (m.in_features + m.out_features)
    # 8-bit factors: close to the float factorization
    assert torch.allclose(_logits(res.model, x), _logits(lr, x), atol=0.05)
    save_compressed(res.model, tmp_path / "lq")
    assert os.path.getsize(tmp_path / "lq" / "model.safetensors") == _serialized(res.model)
    assert torch.equal(_logits(load_compressed(tmp_path / "lq"), x), _logits(res.model, x))


def _serialized(model) -> int:
    from harness.measure.size import serialized_bytes

    return serialized_bytes(model)


def test_stage_records_and_observer_see_each_stage():
    seen = []

    def observe(i, model):
        seen.append((i, sum(isinstance(m, QuantLinear) for m in model.modules())))
        return {"quant_layers": seen[-1][1]}

    with observe_stages(observe):
        res = compress(random_llama(), "magnitude:sparsity=0.5,format=dense + rtn:bits=4,group=64")
    assert seen == [(1, 0), (2, 0)]  # after stage 2 the sparse layers are SparseQuantLinear
    st = res.extra["stages"]
    assert [s["spec"] for s in st] == ["magnitude:sparsity=0.5,format=dense", "rtn:group=64"]
    assert [s["storage"] for s in st] == ["mask", "packed"] and all(s["wall_s"] >= 0 for s in st)
    assert res.extra["pipeline"] == res.spec and res.storage == "packed"
    assert any(n.startswith("[2 rtn] stacked formats: sparse + quantized") for n in res.notes)


def test_records_carry_the_spec_and_the_size_after_each_stage(tiny_lm):
    from harness.evaluation import compress_and_measure

    spec = "magnitude:sparsity=0.5 + rtn:bits=4,group=64"
    res, recs = compress_and_measure(tiny_lm, spec, "size.bytes,compress.wall_s", deltas=False)
    by = {r.metric: r for r in recs}
    stages = by["compress.wall_s"].extra["stages"]
    assert by["compress.wall_s"].extra["pipeline"] == canonical_spec(make(spec)) == res.spec
    assert [s["stage"] for s in stages] == [1, 2]
    assert stages[0]["size_bytes"] > stages[1]["size_bytes"] == by["size.bytes"].value
    assert stages[1]["bits_per_param"] < 4.0  # 1-bit mask + half the codes + scales
    assert by["compress.wall_s"].value >= sum(s["wall_s"] for s in stages) * 0.99


def test_distill_after_pruning_learns_from_the_uncompressed_model(monkeypatch):
    import harness.techniques.distillation.distill as D

    got = {}

    def fake(teacher, calibration, cfg, base=None):
        got["teacher"] = teacher.model.layers[0].mlp.up_proj.out_features
        got["base"] = base.model.layers[0].mlp.up_proj.out_features
        return base, ["fake"], {"train.steps": 1.0}

    monkeypatch.setattr(D, "distill", fake)
    res = compress(random_llama(), "prune-neurons:fraction=0.5 + distill:steps=1", calibration=_calib())
    assert got == {"teacher": 128, "base": 64}
    assert res.figures == {"train.steps": 1.0}


def _calib():
    from harness.calibration import Calibration

    x = ids(4, 32)
    return Calibration(x, torch.ones_like(x))


def test_pipeline_is_listed_and_has_a_cheap_suite_spec():
    from harness.techniques import TECHNIQUES

    cls = TECHNIQUES.get("pipeline")
    assert cls.suite_specs and isinstance(make(cls.suite_specs[0]), Pipeline)
    with pytest.raises(SpecError, match="empty pipeline"):
        compress(random_llama(), Pipeline())


def test_every_stacked_format_reloads_in_a_fresh_process(tmp_path):
    """Low-rank + quantized MLPs, sparse + quantized attention and a packed embedding in one
    checkpoint: a fresh interpreter rebuilds every layer by name, with identical logits."""
    import subprocess
    import sys

    spec = ("svd:rank=8,targets=model.layers.*.mlp.* + magnitude:sparsity=0.75,targets=model.layers.*.self_attn.* "
            "+ rtn:bits=8 + quant-embed:bits=4,group=32")
    res = compress(random_llama(), spec)
    kinds = {type(m).__name__ for m in _linears(res.model).values()}
    assert kinds == {"LowRankQuantLinear", "SparseQuantLinear"}
    save_compressed(res.model, tmp_path / "m")
    x = ids()
    torch.save(x, tmp_path / "x.pt")
    torch.save(_logits(res.model, x), tmp_path / "want.pt")
    code = ("import sys, torch, harness\n"
            "m = harness.load_compressed(sys.argv[1])\n"
            "with torch.no_grad():\n"
            "    got = m(input_ids=torch.load(sys.argv[2])).logits\n"
            "assert torch.equal(got, torch.load(sys.argv[3])), 'logits differ'\n"
            "print(type(m.model.embed_tokens).__name__)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m"), str(tmp_path / "x.pt"),
                          str(tmp_path / "want.pt")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["QuantEmbedding"]


def test_cli_eval_runs_a_pipeline_records_its_stages_and_saves(capsys, tmp_path):
    import json

    from harness.cli import main

    spec = "magnitude:sparsity=0.5 + rtn:bits=4,group=64"
    code = main(["eval", "harness-tiny", "-t", spec, "-m", "size.bytes,compress.wall_s", "--json",
                 "--save", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 0, err
    rows = {r["metric"]: r for r in map(json.loads, out.splitlines())}
    assert rows["size.bytes"]["technique"] == "pipeline" and rows["size.bytes"]["spec"] == canonical_spec(make(spec))
    assert [s["technique"] for s in rows["compress.wall_s"]["extra"]["stages"]] == ["magnitude", "rtn"]
    assert os.path.getsize(tmp_path / "out" / "model.safetensors") == rows["size.bytes"]["value"]
    loaded = load_compressed(tmp_path / "out")
    assert isinstance(loaded.model.layers[0].mlp.up_proj, SparseQuantLinear)


@pytest.mark.parametrize("family", ["gpt2", "opt"])
def test_the_suite_pipeline_runs_on_other_families(family):
    """GPT-2's Conv1D and OPT's biased linears through sparse + quantized stacking."""
    from conftest import FAMILIES

    from harness.techniques import TECHNIQUES

    model = FAMILIES[family]()
    res = compress(copy.deepcopy(model), TECHNIQUES.get("pipeline").suite_specs[0])
    stacked = [m for m in res.model.modules() if isinstance(m, SparseQuantLinear)]
    assert stacked and all(m.nnz * 2 == m.out_features * m.in_features for m in stacked)
    x = ids()
    out = _logits(res.model, x)
    assert torch.isfinite(out).all() and not torch.equal(out, _logits(model, x))


def test_each_stage_calibrates_on_the_model_the_previous_stage_made():
    """A pipeline equals its stages applied one after the other: GPTQ's Hessians come from
    the pruned model's activations (the same calibration windows run through it)."""
    model, calib = random_llama(), _calib()
    piped = compress(copy.deepcopy(model), "prune-neurons:fraction=0.25 + gptq:bits=4,group=32", calibration=calib)
    pruned = compress(copy.deepcopy(model), "prune-neurons:fraction=0.25", calibration=calib).model
    by_hand = compress(pruned, "gptq:bits=4,group=32", calibration=calib).model
    for n, m in _linears(piped.model).items():
        assert m.in_features * m.out_features == by_hand.get_submodule(n).in_features * by_hand.get_submodule(
            n).out_features and torch.equal(m.qweight, by_hand.get_submodule(n).qweight), n
    assert piped.model.model.layers[0].mlp.up_proj.out_features == 96  # 128 neurons, a quarter removed
