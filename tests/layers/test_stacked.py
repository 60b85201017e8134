"""Stacked layers: SparseQuantLinear keeps exactly the kept codes (sym and asym, ragged
groups), LowRankQuantLinear stores packed factors; both rebuild from their arguments."""
from __future__ import annotations

import pytest
import torch

from harness.layers.quant import QuantLinear
from harness.layers.stacked import (
    LowRankQuantLinear,
    SparseQuantLinear,
    quant_bytes,
    saves_over_dense,
    sparse_quant_bytes,
)


def _state_bytes(m) -> int:
    return sum(t.numel() * t.element_size() for t in m.state_dict().values())


@pytest.mark.parametrize("sym,group,bits", [(True, 16, 4), (False, 24, 3), (False, None, 2), (True, 32, 8)])
def test_sparse_quant_keeps_the_kept_codes_and_zeros_elsewhere(sym, group, bits):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(12, 40, generator=g)
    keep = torch.rand(12, 40, generator=g) > 0.6
    q = QuantLinear.from_weight(w, torch.randn(12, generator=g), bits=bits, group=group, sym=sym)
    s = SparseQuantLinear.from_quant(q, keep)
    dense = s.dense_weight()
    assert torch.equal(dense[keep], q.dequantize()[keep]) and bool((dense[~keep] == 0).all())
    assert s.nnz == int(keep.sum()) and torch.equal(s.keep_mask(), keep)
    assert _state_bytes(s) - 12 * 4 == sparse_quant_bytes(12, 40, s.nnz, bits, group, sym)  # minus the fp32 bias
    x = torch.randn(3, 40, generator=g)
    assert torch.allclose(s(x), x @ dense.t() + q.bias, atol=1e-5)
    rebuilt = SparseQuantLinear.from_args(s.layer_args())
    rebuilt.load_state_dict(s.state_dict())
    assert torch.equal(rebuilt.dense_weight(), dense)


def test_sparse_codes_pay_only_below_one_minus_one_over_bits_density():
    assert saves_over_dense(64, 64, 64 * 64 // 2, 4, 64, True)  # 1 + 2 bits < 4
    assert not saves_over_dense(64, 64, 64 * 64 // 2, 2, 64, True)  # 1 + 1 bits == 2
    assert sparse_quant_bytes(64, 64, 0, 4, 64, True) < quant_bytes(64, 64, 4, 64, True)


def test_input_scaled_codes_have_no_sparse_format():
    q = QuantLinear.from_weight(torch.randn(4, 8), bits=4, group=8, input_scale=torch.ones(8))
    with pytest.raises(ValueError, match="input scales"):
        SparseQuantLinear.from_quant(q, torch.ones(4, 8, dtype=torch.bool))


@pytest.mark.parametrize("sym", [True, False])
def test_lowrank_quant_applies_both_packed_factors(sym):
    g = torch.Generator().manual_seed(1)
    A, B, bias = torch.randn(6, 40, generator=g), torch.randn(24, 6, generator=g), torch.randn(24, generator=g)
    a = QuantLinear.from_weight(A, bits=4, group=16, sym=sym)
    b = QuantLinear.from_weight(B, bias, bits=4, group=16, sym=sym)
    lq = LowRankQuantLinear.from_quant(a, b, b.bias)
    Aq, Bq = lq.factors()
    assert torch.equal(Aq, a.dequantize()) and torch.equal(Bq, b.dequantize())
    x = torch.randn(5, 40, generator=g)
    assert torch.allclose(lq(x), (x @ Aq.t()) @ Bq.t() + bias, atol=1e-5)
    assert lq.stored_params() == 6 * (40 + 24) and lq.logical_params() == 24 * 40
    rebuilt = LowRankQuantLinear.from_args(lq.layer_args())
    rebuilt.load_state_dict(lq.state_dict())
    assert torch.equal(rebuilt(x), lq(x))


def test_factors_quantized_differently_are_refused():
    a = QuantLinear.from_weight(torch.randn(4, 16), bits=4, group=8)
    b = QuantLinear.from_weight(torch.randn(8, 4), bits=8, group=8)
    with pytest.raises(ValueError, match="quantized differently"):
        LowRankQuantLinear.from_quant(a, b, None)
