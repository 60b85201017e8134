"""GQA conversion: mean-pooled KV heads (exact when the pooled heads agree), shapes and
KV-cache bytes halve, reload with transformers alone, uptraining figures, errors."""
from __future__ import annotations

import pytest
import torch
from conftest import ids, random_gpt2, random_llama

import harness
from harness.config import SpecError
from harness.measure.memory import measure_kv_cache

pytestmark = pytest.mark.usefixtures("one_thread")


def _llama():
    return random_llama(layers=2, heads=8, kv_heads=4, hidden=64)


def test_pooling_heads_that_agree_changes_nothing():
    m = _llama()
    hd = m.config.hidden_size // m.config.num_attention_heads
    with torch.no_grad():  # KV heads 2g and 2g+1 identical in every block
        for layer in m.model.layers:
            for proj in (layer.self_attn.k_proj, layer.self_attn.v_proj):
                w = proj.weight.view(2, 2, hd, -1)
                w[:, 1] = w[:, 0]
    x = ids()
    ref = m(input_ids=x).logits
    out = harness.compress(m, "gqa:kv_heads=2").model
    assert out.model.layers[0].self_attn.k_proj.weight.shape == (2 * hd, 64)
    torch.testing.assert_close(out(input_ids=x).logits, ref, rtol=1e-5, atol=1e-5)


def test_pooled_heads_are_the_group_means_and_the_model_reloads(tmp_path):
    from transformers import AutoModelForCausalLM

    m = _llama()
    hd = 8
    k_old = m.model.layers[1].self_attn.k_proj.weight.detach().clone().view(4, hd, -1)
    out = harness.compress(m, "gqa:kv_heads=1").model
    torch.testing.assert_close(out.model.layers[1].self_attn.k_proj.weight, k_old.mean(0))
    assert out.config.num_key_value_heads == 1
    out.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(again(input_ids=ids()).logits, out(input_ids=ids()).logits)


def test_kv_cache_bytes_per_token_halve():
    m = _llama()
    x = ids(batch=1, seq=8)
    dense = measure_kv_cache(m, x, 4)
    half = measure_kv_cache(harness.compress(m, "gqa:kv_heads=2").model, x, 4)
    assert dense.extra["tokens"] == half.extra["tokens"] and dense.extra["bytes"] == 2 * half.extra["bytes"]


@pytest.mark.parametrize("spec, msg", [
    ("gqa:kv_heads=3", r"kv_heads=3 does not divide the 8 query heads; allowed: 1, 2"),
    ("gqa:kv_heads=4", r"kv_heads=4 is not a divisor of the current 4 KV heads below it; allowed: 1, 2"),
])
def test_bad_kv_heads_name_the_value_and_the_allowed(spec, msg):
    with pytest.raises(SpecError, match=msg):
        harness.compress(_llama(), spec)


def test_families_without_kv_heads_are_refused():
    with pytest.raises(SpecError, match=r"gqa does not apply to gpt2 models; it converts the attention of .*llama"):
        harness.compress(random_gpt2(), "gqa:kv_heads=1")


def test_uptraining_trains_on_the_stream_and_reports_its_figures(tiny_lm, tiny_calibration):
    res = harness.compress(tiny_lm.model, "gqa:kv_heads=2,steps=3,batch=2,seq_len=32", tiny_calibration)
    f = res.figures
    assert f["train.steps"] == 3 and f["train.tokens"] == 3 * 2 * 32 and f["train.wall_s"] > 0
    assert f["train.loss_first"] > 0 and res.model.config.num_key_value_heads == 2
