"""Torch references for every kernel's math (the tests' ground truth, and the fallback).

Packed format (``harness.primitives.packing``, ``harness.layers.quant.QuantLinear``):
``qweight`` uint8 ``[N, ceil(K*bits/8)]`` packed along the input dim (little-endian;
4-bit: element ``2j`` in the low nibble of byte ``j``; 2-bit: element ``4j+k`` at bits
``2k..2k+1``), ``scales`` float16 ``[N, ceil(K/group)]``, ``zeros`` uint8 ``[N, ceil(K/group)]``
or None (symmetric: implicit zero ``2**(bits-1)``); input ``k`` uses group ``k // group``, so
when ``group`` does not divide ``K`` the last group is ragged (``K % group`` inputs). The
references handle that; the Triton kernels refuse it (``KernelUnsupported``), and
``dispatch`` falls back to these. ``w = (q - z) * s``; the layer computes
``y = x @ w.T (+ bias)``. CALDERA adds a low-rank term: ``y = x @ w.T + (x @ R.T) @ L.T``.

The references accumulate in float32 and return ``x.dtype``.
"""
from __future__ import annotations

import torch

from harness.primitives.packing import unpack
from harness.primitives.quant import dequantize_groupwise


def dequantize(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, bits: int,
               group: int | None, in_features: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dense ``[N, K]`` weight from the packed buffers."""
    codes = unpack(qweight, bits, in_features)
    return dequantize_groupwise(codes, scales, zeros, bits, group, dtype)


def quant_matmul_ref(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                     bits: int, group: int | None, in_features: int | None = None,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ dequant(Q).T + bias`` in float32, returned as ``x.dtype`` (any leading dims)."""
    k = in_features or x.shape[-1]
    w = dequantize(qweight, scales, zeros, bits, group, k, torch.float32)
    y = x.float() @ w.T
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def qlr_matmul_ref(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                   bits: int, group: int | None, L: torch.Tensor, R: torch.Tensor, in_features: int | None = None,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """CALDERA ``y = dequant(Q) x + L (R x) (+ bias)``: ``L`` ``[N, r]``, ``R`` ``[r, K]``."""
    y = quant_matmul_ref(x, qweight, scales, zeros, bits, group, in_features, bias).float()
    y = y + (x.float() @ R.float().T) @ L.float().T
    return y.to(x.dtype)


def dense_matmul_ref(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ W.T`` in float32 (the low-rank factors' reference)."""
    return (x.float() @ weight.float().T).to(x.dtype)


__all__ = ["dense_matmul_ref", "dequantize", "qlr_matmul_ref", "quant_matmul_ref"]
