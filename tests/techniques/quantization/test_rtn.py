"""RTN technique: every family, packed storage, save -> load identity, bad specs."""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import ids

import harness
from harness.config import SpecError
from harness.layers.quant import QuantLinear
from harness.measure.size import measure_size

pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: one torch thread is faster


def _logits(model, x):
    with torch.no_grad():
        out = model(x)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("spec", ["rtn:bits=8", "rtn:bits=4,group=32,sym=false", "rtn:bits=3,group=16"])
def test_all_families_quantize_save_load(family_model, spec, tmp_path):
    fam, model = family_model
    x = ids()
    ref = _logits(model, x)
    res = harness.compress(copy.deepcopy(model), spec, kind="encoder" if fam == "bert" else "causal-lm")
    assert res.storage == "packed"
    qs = [m for m in res.model.modules() if isinstance(m, QuantLinear)]
    assert len(qs) >= 4 * 2  # at least the attention/MLP linears of both blocks
    out = _logits(res.model, x)
    rel = (out - ref).norm() / ref.norm()
    assert rel < {8: 0.02, 4: 0.3, 3: 0.6}[res.config.bits]
    harness.save_compressed(res.model, tmp_path / fam)
    assert torch.equal(_logits(harness.load_compressed(tmp_path / fam), x), out)


def test_int4_g128_storage_shrinks():
    from conftest import random_llama

    model = random_llama(hidden=128, inter=256)
    bytes0 = {r.metric: r.value for r in measure_size(model)}["size.bytes"]
    res = harness.compress(model, "rtn:bits=4,group=128")
    recs = {r.metric: r.value for r in measure_size(res.model)}
    # every quantized layer stores exactly 4 bits per weight + one float16 scale per 128
    qs = [m for m in res.model.modules() if isinstance(m, QuantLinear)]
    for m in qs:
        bits = sum(t.numel() * t.element_size() * 8 for n, t in m.state_dict().items() if n != "bias")
        assert bits / m.logical_params() == pytest.approx(4 + 16 / 128)
    assert recs["size.bits_per_param"] <= 4.3  # measure.size over the whole model
    assert recs["size.bytes"] < bytes0


def test_bad_specs():
    from conftest import random_llama

    with pytest.raises(SpecError, match="bits=5"):
        harness.make("rtn:bits=5")
    with pytest.raises(SpecError, match="group=0 must be a positive integer") as e:
        harness.compress(random_llama(), "rtn:bits=4,group=0")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("tied", [False, True])
def test_head_option_packs_the_output_head_and_round_trips(tied, tmp_path):
    """head=true quantizes lm_head; a tied head is untied (the embedding keeps its fp32 bytes,
    the head's packed bytes are added) and reloads without transformers re-tying it."""
    from conftest import random_llama

    model = random_llama(hidden=64)
    model.config.tie_word_embeddings = tied
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    x = ids()
    ref = _logits(model, x)
    bytes0 = {r.metric: r.value for r in measure_size(model)}["size.bytes"]
    kept = harness.compress(copy.deepcopy(model), "rtn:bits=4,group=32")
    res = harness.compress(copy.deepcopy(model), "rtn:bits=4,group=32,head=true")
    assert not isinstance(kept.model.lm_head, QuantLinear) and "output head kept in full precision" in kept.notes
    assert isinstance(res.model.lm_head, QuantLinear) and res.model.lm_head.bits == 4
    assert any(n.startswith("output head quantized") and ("tied" in n) == tied for n in res.notes)
    head_packed = sum(t.numel() * t.element_size() for n, t in res.model.lm_head.state_dict().items()
                      if n in {"qweight", "scales", "zeros", "bias"})
    size = {r.metric: r.value for r in measure_size(res.model)}["size.bytes"]
    size_kept = {r.metric: r.value for r in measure_size(kept.model)}["size.bytes"]
    head_fp32 = model.lm_head.weight.numel() * 4
    # untied: the fp32 head is replaced by its packed form; tied: the packed head comes on top
    # (size.bytes is the serialized file: a few header bytes per tensor entry besides)
    assert size == pytest.approx(size_kept - (0 if tied else head_fp32) + head_packed, abs=256)
    assert head_packed == 128 * 64 // 2 + 128 * (64 // 32) * 2  # 4-bit codes + one fp16 scale per 32
    assert size < bytes0
    out = _logits(res.model, x)
    assert (out - ref).norm() / ref.norm() < 0.3
    harness.save_compressed(res.model, tmp_path / "m")
    back = harness.load_compressed(tmp_path / "m")
    assert isinstance(back.lm_head, QuantLinear) and torch.equal(_logits(back, x), out)
