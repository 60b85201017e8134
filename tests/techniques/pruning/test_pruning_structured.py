"""Structured removal: shapes shrink, zeroed units give identical outputs, reload, errors."""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import ids, random_llama

import harness
from harness.calibration import Calibration, find_blocks
from harness.config import SpecError
from harness.layers.base import linear_weight
from harness.techniques.structure import (
    attn_of,
    ffn_of,
    heads,
    remove_ffn_neurons,
    remove_head_groups,
    remove_layers,
)


def _out(model, x):
    o = model(input_ids=x)
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


def _kind(fam):
    return "encoder" if fam == "bert" else "causal-lm"


def _zero_cols(mod, idx):
    with torch.no_grad():
        linear_weight(mod)[:, idx] = 0


def test_zeroed_neurons_equal_removed_neurons(family_model):
    _, model = family_model
    _, blocks = find_blocks(model)
    f = ffn_of(blocks[0])
    width = linear_weight(blocks[0].get_submodule(f.out)).shape[1]
    drop = torch.tensor([1, 5, 7, width - 1])
    keep = torch.tensor([j for j in range(width) if j not in set(drop.tolist())])
    for b in blocks:
        _zero_cols(b.get_submodule(f.out), drop)
    x = ids()
    ref = _out(model, x)
    pruned = remove_ffn_neurons(copy.deepcopy(model), {i: keep for i in range(len(blocks))})
    assert linear_weight(find_blocks(pruned)[1][0].get_submodule(f.out)).shape[1] == width - 4
    torch.testing.assert_close(_out(pruned, x), ref, rtol=1e-5, atol=1e-5)


def test_zeroed_head_groups_equal_removed_groups(family_model):
    _, model = family_model
    _, blocks = find_blocks(model)
    a = attn_of(blocks[0])
    nq, nkv = heads(blocks[0], a)
    rep, hd = nq // nkv, a.head_dim
    g = 1  # zero group 1's output-projection columns in every block
    for b in blocks:
        _zero_cols(b.get_submodule(a.o), torch.arange(g * rep * hd, (g + 1) * rep * hd))
    x = ids()
    ref = _out(model, x)
    keep = torch.tensor([j for j in range(nkv) if j != g])
    pruned = remove_head_groups(copy.deepcopy(model), {i: keep for i in range(len(blocks))})
    assert heads(find_blocks(pruned)[1][0], a) == (nq - rep, nkv - 1)
    torch.testing.assert_close(_out(pruned, x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fam", ["llama", "opt", "gpt2"])  # pre-LN: a zeroed block is the identity
def test_zeroed_layer_equals_dropped_layer_and_decode_cache_works(fam):
    from conftest import FAMILIES

    model = FAMILIES[fam]()
    _, blocks = find_blocks(model)
    b0 = blocks[0]
    with torch.no_grad():
        for path in (attn_of(b0).o, ffn_of(b0).out):
            m = b0.get_submodule(path)
            linear_weight(m).zero_()
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
    x = ids()
    ref = _out(model, x)
    pruned = remove_layers(copy.deepcopy(model), [0])
    assert len(find_blocks(pruned)[1]) == len(blocks) - 1
    torch.testing.assert_close(_out(pruned, x), ref, rtol=1e-5, atol=1e-5)
    # incremental decoding with a KV cache matches the full forward (layer_idx renumbered)
    out = pruned(input_ids=x[:, :-1], use_cache=True)
    step = pruned(input_ids=x[:, -1:], past_key_values=out.past_key_values, use_cache=True)
    torch.testing.assert_close(step.logits[:, -1], ref[:, -1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spec", ["prune-neurons:fraction=0.25", "prune-heads:fraction=0.5", "drop-layers:count=1"])
def test_save_load_identical_logits_every_family(tmp_path, family_model, spec):
    fam, model = family_model
    n0 = sum(p.numel() for p in model.parameters())
    calib = Calibration(torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0)))
    res = harness.compress(model, spec, calibration=calib, kind=_kind(fam))
    assert res.storage == "structural"
    assert sum(p.numel() for p in res.model.parameters()) < n0
    x = ids()
    ref = _out(res.model, x)
    back = harness.load_compressed(harness.save_compressed(res.model, tmp_path / "m"))
    assert torch.equal(_out(back, x), ref)


def test_llama_gqa_config_updated_and_whole_groups_removed():
    model = random_llama(heads=8, kv_heads=4)
    res = harness.compress(model, "prune-heads:fraction=0.25")
    cfg = res.model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (6, 3, 8)
    att = res.model.model.layers[0].self_attn
    assert att.q_proj.out_features == 48 and att.k_proj.out_features == 24 and att.o_proj.in_features == 48
    res2 = harness.compress(random_llama(), "prune-neurons:fraction=0.25")
    assert res2.model.config.intermediate_size == 96


def test_drop_layers_without_calibration_uses_probe():
    res = harness.compress(random_llama(layers=3), "drop-layers:count=2")
    assert res.model.config.num_hidden_layers == 1 and len(res.model.model.layers) == 1
    assert res.model.model.layers[0].self_attn.layer_idx == 0
    assert any("no calibration" in n for n in res.notes)


@pytest.mark.parametrize("spec,match", [
    ("prune-heads:fraction=0.9", "would remove every one of the 2 KV head groups"),
    ("drop-layers:count=2", "would remove every one of the 2 layers"),
    ("prune-neurons:fraction=1.0", r"fraction=1.0 is outside \(0, 1\)"),
    ("drop-layers:count=0", "count=0 must be >= 1"),
])
def test_bad_structured_requests(llama, spec, match):
    with pytest.raises(SpecError, match=match) as e:
        harness.compress(llama, spec)
    assert "\n" not in str(e.value)


def test_small_fraction_removes_at_least_one_unit_and_says_so(llama):
    """A request that rounds to zero would measure the dense model under a pruning label."""
    res = harness.compress(llama, "prune-heads:fraction=0.1")
    assert res.model.config.num_key_value_heads == 1
    assert any("removed 1 of 2 KV head groups per layer (fraction 0.5; requested 0.1)" in n for n in res.notes)


def _near_identity(model, blocks: list[int], scale: float = 1e-3):
    """Blocks that add almost nothing to the residual stream: input ~ output."""
    with torch.no_grad():
        for i in blocks:
            b = find_blocks(model)[1][i]
            b.self_attn.o_proj.weight.mul_(scale)
            b.mlp.down_proj.weight.mul_(scale)
    return model


@pytest.mark.parametrize("near, count", [([1], 1), ([1, 2], 2), ([3], 1)])
def test_angular_drop_removes_the_near_identity_run_and_reloads_with_transformers(tmp_path, near, count):
    from transformers import AutoModelForCausalLM

    model = _near_identity(random_llama(layers=4), near)
    calib = Calibration(ids(batch=4, seq=16))
    res = harness.compress(copy.deepcopy(model), f"drop-layers:count={count},select=angular", calib)
    assert any(f"dropped blocks {near}: angular distance" in n for n in res.notes)
    kept = [i for i in range(4) if i not in near]
    assert res.model.config.num_hidden_layers == len(kept)
    for j, i in enumerate(kept):  # the kept blocks, in order, with their own weights
        assert torch.equal(res.model.model.layers[j].mlp.up_proj.weight, model.model.layers[i].mlp.up_proj.weight)
    res.model.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    x = ids(batch=2, seq=12)
    with torch.no_grad():
        assert torch.allclose(back(input_ids=x).logits, res.model(input_ids=x).logits, atol=1e-6)
        full = model(input_ids=x).logits
        other = remove_layers(copy.deepcopy(model), [0] if 0 not in near else [3])(input_ids=x).logits
        # dropping the near-identity run costs far less than dropping an ordinary block
        assert (res.model(input_ids=x).logits - full).abs().max() < 0.1 * (other - full).abs().max()


def test_angular_distance_is_measured_before_the_final_norm():
    """The last block's output is the residual stream, not the final-normed hidden state
    (HF returns the latter as hidden_states[-1]): a last block that adds nothing is at 0."""
    from harness.techniques.structure import angular_distances

    model = random_llama(layers=3)
    with torch.no_grad():
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
    d = angular_distances(model, Calibration(ids(batch=2, seq=16)), 1)
    assert d.shape == (3,) and float(d[2]) < 1e-4 < float(d[:2].min())


def test_drop_layers_select_not_allowed_is_one_line(llama):
    with pytest.raises(SpecError, match="select='cosine' is not allowed; choose one of influence, angular"):
        harness.compress(llama, "drop-layers:select=cosine")
