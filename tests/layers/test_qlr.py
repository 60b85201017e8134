"""QLRLinear: packed Q + L R storage, forward = dequantized reference, save -> load identity."""
from __future__ import annotations

import pytest
import torch

from harness.checkpoint import load_compressed, save_compressed
from harness.config import SpecError
from harness.layers.qlr import QLRLinear
from harness.primitives.quant import (
    dequantize_groupwise,
    quantize_groupwise,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: one torch thread is faster


def _layer(bias=True):
    torch.manual_seed(0)
    Q, L, R = torch.randn(48, 64), torch.randn(48, 6), torch.randn(6, 64)
    b = torch.randn(48) if bias else None
    return QLRLinear.from_float(Q, L, R, b, q_bits=2, q_group=32, lr_bits=4, lr_group=None), (Q, L, R, b)


def test_forward_is_dequantized_q_plus_lr():
    layer, (Q, L, R, b) = _layer()
    deq = lambda w, bits, g: dequantize_groupwise(*quantize_groupwise(w, bits, g, True)[:2], None, bits, g)
    W = deq(Q, 2, 32) + deq(L, 4, None) @ deq(R, 4, None)
    x = torch.randn(5, 64)
    layer.use_kernel = False  # the torch reference path (the CPU kernels: tests/layers/test_exec.py)
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, W, b), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(layer.dense_weight(), W)


def test_storage_is_packed():
    layer, _ = _layer(bias=False)
    sd = layer.state_dict()
    assert sd["q_packed"].dtype == torch.uint8 and sd["q_packed"].numel() == 48 * 64 * 2 // 8
    assert sd["l_packed"].numel() == 48 * 6 * 4 // 8 and sd["r_packed"].numel() == 6 * 64 * 4 // 8
    bits = sum(t.numel() * t.element_size() * 8 for t in sd.values())
    expected = 48 * 64 * 2 + 48 * 2 * 16 + 6 * (48 + 64) * 4 + (48 + 6) * 16
    assert bits == expected
    assert bits / layer.logical_params() < 4.0  # vs 32 for the fp32 dense layer


def test_asymmetric_q_stores_a_zero_point_per_group_and_uses_it():
    torch.manual_seed(0)
    Q = torch.rand(48, 64) + 0.5  # all-positive groups: a zero point is worth its byte
    L, R = torch.randn(48, 6) * 0.01, torch.randn(6, 64) * 0.01
    asym = QLRLinear.from_float(Q, L, R, q_bits=2, q_group=32, q_sym=False)
    sym = QLRLinear.from_float(Q, L, R, q_bits=2, q_group=32)
    sd = asym.state_dict()
    assert sd["q_zeros"].dtype == torch.uint8 and sd["q_zeros"].shape == (48, 2) and "q_zeros" not in sym.state_dict()
    bits = lambda m: sum(t.numel() * t.element_size() * 8 for t in m.state_dict().values())
    assert bits(asym) - bits(sym) == 48 * 2 * 8
    c, sc, z = quantize_groupwise(Q, 2, 32, False)
    torch.testing.assert_close(asym.factors()[0], dequantize_groupwise(c, sc.half(), z, 2, 32))
    err = lambda m: (m.factors()[0] - Q).abs().mean()
    assert err(asym) < 0.5 * err(sym)
    assert asym.layer_args()["q_sym"] is False
    back = QLRLinear(**asym.layer_args())
    back.load_state_dict(sd)
    torch.testing.assert_close(back.dense_weight(), asym.dense_weight())


@pytest.mark.parametrize("sym", [True, False])
def test_save_load_roundtrip(tmp_path, sym):
    from conftest import ids, random_llama

    from harness.calibration import Calibration
    from harness.techniques import compress

    model = random_llama()
    calib = Calibration(ids(4, 32))
    res = compress(model, f"caldera:rank=4,q_group=32,iters=2,q_sym={sym}", calib)
    assert sum(isinstance(m, QLRLinear) for m in res.model.modules()) == 14
    save_compressed(res.model, tmp_path / "m")
    back = load_compressed(tmp_path / "m")
    x = ids()
    assert torch.equal(res.model(input_ids=x).logits, back(input_ids=x).logits)


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(SpecError, match="rank=64"):
        QLRLinear(64, 48, 64)
    with pytest.raises(SpecError, match="bits=5"):
        QLRLinear(64, 48, 4, q_bits=5)
    with pytest.raises(SpecError, match="group=0"):
        QLRLinear(64, 48, 4, q_group=0)
    assert QLRLinear(64, 48, 4, q_group=48).q_scales.shape == (48, 2)  # ragged last group of 16
