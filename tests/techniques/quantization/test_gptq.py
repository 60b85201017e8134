"""GPTQ: beats RTN on a constructed layer and on harness-tiny; bad input."""
from __future__ import annotations

import copy

import pytest
import torch

import harness
from harness.layers.quant import QuantLinear
from harness.measure.accuracy import perplexity_window
from harness.primitives.quant import (
    dequantize_groupwise,
    quantize_groupwise,
)
from harness.techniques.base import CalibrationRequiredError
from harness.techniques.quantization.gptq import gptq_quantize

pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: one torch thread is faster


def _correlated_inputs(n=2048, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) / d ** 0.5
    scale = torch.logspace(-1, 1, d)  # a few strong channels, like LLM activations
    return (torch.randn(n, d, generator=g) @ mix) * scale


@pytest.mark.parametrize("bits,group,act_order", [(3, None, False), (4, 16, False), (3, 16, True), (2, None, True)])
def test_gptq_reduces_layer_output_error(bits, group, act_order):
    g = torch.Generator().manual_seed(1)
    W = torch.randn(32, 64, generator=g)
    X = _correlated_inputs()
    H = X.t() @ X / X.shape[0]
    ref = X @ W.t()
    q, s, z = quantize_groupwise(W, bits, group, True)
    err_rtn = (ref - X @ dequantize_groupwise(q, s, z, bits, group).t()).pow(2).mean()
    q, s, z = gptq_quantize(W, H, bits, group, True, blocksize=16, act_order=act_order)
    assert q.dtype == torch.uint8 and s.shape == (32, 1 if group is None else 64 // group)
    err_gptq = (ref - X @ dequantize_groupwise(q, s, z, bits, group).t()).pow(2).mean()
    # act-order quantizes the strong input channels first, so their error is compensated
    assert err_gptq < (0.5 if act_order else 0.9) * err_rtn


def test_gptq_asym_codes_fit_layout():
    W = torch.randn(8, 32)
    X = _correlated_inputs(256, 32)
    q, _, z = gptq_quantize(W, X.t() @ X, 4, 8, False)
    assert z is not None and z.shape == (8, 4) and int(q.max()) <= 15


def test_gptq_beats_rtn_on_tiny(tiny_lm, tiny_calibration):
    tok = tiny_lm.tokenizer

    def ppl(m):
        with torch.no_grad():
            return perplexity_window(m, tok, "validation", max_tokens=4096)

    calib = harness.Calibration(tiny_calibration.input_ids[:8], tiny_calibration.attention_mask[:8])
    fp = ppl(tiny_lm.model)
    rtn = ppl(harness.compress(copy.deepcopy(tiny_lm.model), "rtn:bits=3").model)
    res = harness.compress(copy.deepcopy(tiny_lm.model), "gptq:bits=3", calibration=calib)
    gptq = ppl(res.model)
    assert fp < gptq < rtn
    assert gptq - fp <= 0.5 * (rtn - fp)  # the target at 3-bit per channel
    assert any("calibration_n=8" in n for n in res.notes)
    assert all(isinstance(m, QuantLinear) for n, m in res.model.named_modules() if n.endswith("proj"))


def test_gptq_needs_calibration(llama):
    with pytest.raises(CalibrationRequiredError, match="gptq"):
        harness.compress(llama, "gptq:bits=4")


def test_head_option_gptq_calibrates_the_head_on_final_hidden_states(tiny_lm, tiny_calibration):
    """gptq/awq head=true quantize lm_head from statistics of its real inputs (the final hidden
    states of the already-quantized model); GPTQ's error feedback beats round-to-nearest there too."""
    tok = tiny_lm.tokenizer

    def ppl(m):
        with torch.no_grad():
            return perplexity_window(m, tok, "validation", max_tokens=2048)

    calib = harness.Calibration(tiny_calibration.input_ids[:8], tiny_calibration.attention_mask[:8])
    rtn = harness.compress(copy.deepcopy(tiny_lm.model), "rtn:bits=3,group=64,head=true").model
    gptq = harness.compress(copy.deepcopy(tiny_lm.model), "gptq:bits=3,group=64,head=true", calibration=calib).model
    awq = harness.compress(copy.deepcopy(tiny_lm.model), "awq:bits=3,group=64,head=true,grid=4",
                           calibration=calib).model
    for m in (rtn, gptq, awq):
        assert isinstance(m.get_output_embeddings(), QuantLinear) and m.get_output_embeddings().bits == 3
    assert awq.get_output_embeddings().input_scale is not None  # AWQ's scale kept on the head
    assert ppl(gptq) < ppl(rtn)
