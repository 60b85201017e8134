"""QuantLinear: packed storage, the dequantizing forward, and save -> load identity."""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import ids, random_gpt2, random_llama

from harness.checkpoint import load_compressed, save_compressed
from harness.config import SpecError
from harness.layers.quant import QuantLinear
from harness.measure.size import measure_size
from harness.primitives.quant import (
    dequantize_groupwise,
    quantize_groupwise,
)


@pytest.mark.parametrize("bits,group,sym", [(4, 16, True), (3, None, False), (2, 8, False), (8, 32, True)])
def test_forward_matches_dequantized_reference(bits, group, sym):
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 24)
    q = QuantLinear.from_linear(lin, bits=bits, group=group, sym=sym)
    q.use_kernel = False  # the torch reference path (the CPU kernels: tests/layers/test_exec.py)
    codes, s, z = quantize_groupwise(lin.weight, bits, group, sym)
    w = dequantize_groupwise(codes, s, z, bits, group)
    x = torch.randn(5, 64)
    torch.testing.assert_close(q(x), torch.nn.functional.linear(x, w, lin.bias))
    assert torch.equal(q.codes(), codes)
    assert q.qweight.shape == (24, (64 * bits + 7) // 8)
    assert (q.zeros is None) == sym


def test_conv1d_equivalent_to_linear():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    conv = Conv1D(24, 32)  # nf=out, nx=in; weight [in, out]
    q = QuantLinear.from_linear(conv, bits=8, group=None)
    x = torch.randn(3, 32)
    assert q.in_features == 32 and q.out_features == 24
    torch.testing.assert_close(q(x), conv(x), atol=0.02, rtol=0.02)


def test_bits_per_param_int4_g128():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512, bias=False))
    model[0] = QuantLinear.from_linear(model[0], bits=4, group=128, sym=False)
    bpp = {r.metric: r.value for r in measure_size(model)}["size.bits_per_param"]
    assert bpp == pytest.approx(4 + (16 + 8) / 128)
    assert bpp <= 4.3


def test_save_load_identical_logits(tmp_path):
    model = random_llama()
    for name, mod in list(model.named_modules()):
        if isinstance(mod, torch.nn.Linear) and ".layers." in name:
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent), leaf,
                    QuantLinear.from_linear(mod, bits=3, group=32, sym=False))
    x = ids()
    with torch.no_grad():
        ref = model(x).logits
    save_compressed(model, tmp_path / "m")
    back = load_compressed(tmp_path / "m")
    assert isinstance(back.model.layers[0].self_attn.q_proj, QuantLinear)
    with torch.no_grad():
        assert torch.equal(back(x).logits, ref)


def test_gpt2_conv1d_save_load(tmp_path):
    model = random_gpt2()
    ref_model = copy.deepcopy(model)
    attn = model.transformer.h[0].attn
    attn.c_attn = QuantLinear.from_linear(attn.c_attn, bits=8, group=None)
    x = ids()
    with torch.no_grad():
        ref = model(x).logits
        assert (ref - ref_model(x).logits).abs().max() < 0.05
    save_compressed(model, tmp_path / "g")
    with torch.no_grad():
        assert torch.equal(load_compressed(tmp_path / "g")(x).logits, ref)


def test_bad_group_and_bits():
    lin = torch.nn.Linear(30, 4)
    with pytest.raises(SpecError, match="group=0 must be a positive integer"):
        QuantLinear.from_linear(lin, bits=4, group=0)
    assert QuantLinear.from_linear(lin, bits=4, group=8).scales.shape == (4, 4)  # ragged last group of 6
    with pytest.raises(SpecError, match="bits=5"):
        QuantLinear.from_linear(lin, bits=5, group=None)
