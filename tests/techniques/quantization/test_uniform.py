"""Uniform group-wise quantization: the analytic RTN error bound and the code range."""
from __future__ import annotations

import pytest
import torch

from harness.config import SpecError
from harness.primitives.quant import (
    dequantize_groupwise,
    expand_groups,
    quantize_groupwise,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: one torch thread is faster


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group", [16, None])
@pytest.mark.parametrize("sym", [True, False])
def test_error_within_half_step(bits, group, sym):
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(12, 64, generator=g) * 0.05 + 0.01
    codes, scales, zeros = quantize_groupwise(w, bits, group, sym)
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 2 ** bits - 1
    assert scales.shape == (12, 1 if group is None else 64 // group)
    assert (zeros is None) == sym
    w_hat = dequantize_groupwise(codes, scales, zeros, bits, group)
    step = expand_groups(scales.float(), group, 64)
    assert torch.all((w - w_hat).abs() <= step / 2 * (1 + 1e-4) + 1e-7)


def test_more_bits_less_error():
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(0))
    errs = [(w - dequantize_groupwise(*quantize_groupwise(w, b, 32, False), b, 32)).pow(2).mean() for b in (2, 3, 4, 8)]
    assert errs[0] > errs[1] > errs[2] > errs[3]


def test_zero_rows_and_exact_zero():
    w = torch.zeros(2, 8)
    w[1, 3] = 0.5
    codes, s, z = quantize_groupwise(w, 4, None, False)
    w_hat = dequantize_groupwise(codes, s, z, 4, None)
    assert torch.equal(w_hat[0], torch.zeros(8)) and w_hat[1, 0] == 0


def test_bad_arguments():
    with pytest.raises(SpecError, match="bits=6"):
        quantize_groupwise(torch.randn(4, 8), 6, None, True)
    with pytest.raises(SpecError, match="group=0 must be a positive integer"):
        quantize_groupwise(torch.randn(4, 8), 4, 0, True)
    # a group that does not divide in_features is fine: a ragged last group
    assert quantize_groupwise(torch.randn(4, 8), 4, 3, True)[1].shape == (4, 3)
