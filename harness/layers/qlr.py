"""QLRLinear: CALDERA's ``W ≈ Q + L R`` with every term stored at low precision.

Stored tensors (registered buffers, so ``state_dict`` is exactly what ships):

- ``q_packed`` uint8 ``[out, packed(in, q_bits)]`` and ``q_scales`` float16
  ``[out, ceil(in/q_group)]``: the backbone ``Q``, symmetric group-wise codes packed along
  the input dim (``harness.primitives.packing`` layout); when ``q_group`` does not divide ``in``
  the last group is ragged (the remaining ``in % q_group`` inputs). With ``q_sym=False``
  a uint8 ``q_zeros`` ``[out, ceil(in/q_group)]`` holds each group's zero point
  (asymmetric codes, ``w = (q - z) * s``, as in GPTQ's asymmetric tables).
- ``l_packed`` / ``l_scales``: ``L`` ``[out, rank]`` at ``lr_bits``, packed along the rank dim,
  one float16 scale per row (CALDERA rounds L with LDLQ under ``R H Rᵀ``, row by row);
- ``r_packed`` / ``r_scales``: ``R`` ``[rank, in]`` at ``lr_bits``, packed along the input dim,
  float16 scales per row (``lr_group=None``) or per group of ``lr_group`` inputs
  (``[rank, ceil(in/lr_group)]``, ragged last group as for ``Q``).
- ``bias``: optional, original dtype.

Symmetric codes (the default) need no zeros (``w = (q - 2**(bits-1)) * s``). The torch reference
forward dequantizes and runs ``x Qᵀ + (x Rᵀ) Lᵀ`` (no faster than fp32); on CPU the layer
runs Q through the int4pack kernel and L, R as bf16 GEMMs (``harness.layers.exec``).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from harness.layers.base import DTYPES, CompressedModule, dtype_name
from harness.layers.exec import cpu_forward
from harness.layers.lowrank import check_rank
from harness.primitives.packing import pack, packed_width, unpack
from harness.primitives.quant import check_quant_args, dequantize_groupwise, n_groups, quantize_groupwise


class QLRLinear(CompressedModule):
    """Packed ``Q + L R`` layer (drop-in for nn.Linear / GPT-2 Conv1D)."""

    layer_name = "qlr_linear"

    def __init__(self, in_features: int, out_features: int, rank: int, q_bits: int = 2,
                 q_group: int | None = 64, lr_bits: int = 4, lr_group: int | None = None,
                 bias: bool = False, bias_dtype: str = "float32", q_sym: bool = True) -> None:
        super().__init__()
        check_rank(rank, in_features, out_features)
        check_quant_args(q_bits, q_group, in_features)
        check_quant_args(lr_bits, lr_group, in_features)
        self.in_features, self.out_features, self.rank = int(in_features), int(out_features), int(rank)
        self.q_bits, self.q_group = int(q_bits), (None if q_group is None else int(q_group))
        self.lr_bits, self.lr_group = int(lr_bits), (None if lr_group is None else int(lr_group))
        self.q_sym = bool(q_sym)
        z8 = {"dtype": torch.uint8}
        self.register_buffer("q_packed", torch.zeros(out_features, packed_width(in_features, q_bits), **z8))
        self.register_buffer("q_scales", torch.ones(out_features, n_groups(in_features, q_group),
                                                    dtype=torch.float16))
        if not self.q_sym:
            self.register_buffer("q_zeros", torch.zeros(out_features, n_groups(in_features, q_group), **z8))
        else:
            self.q_zeros = None
        self.register_buffer("l_packed", torch.zeros(out_features, packed_width(rank, lr_bits), **z8))
        self.register_buffer("l_scales", torch.ones(out_features, 1, dtype=torch.float16))
        self.register_buffer("r_packed", torch.zeros(rank, packed_width(in_features, lr_bits), **z8))
        self.register_buffer("r_scales", torch.ones(rank, n_groups(in_features, lr_group),
                                                    dtype=torch.float16))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=DTYPES[bias_dtype]))
        else:
            self.bias = None

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_codes(cls, q: tuple[torch.Tensor, ...], L: tuple[torch.Tensor, torch.Tensor],
                   R: tuple[torch.Tensor, torch.Tensor], bias: torch.Tensor | None = None, *,
                   q_bits: int, q_group: int | None, lr_bits: int, lr_group: int | None) -> QLRLinear:
        """Wrap ``(codes, scales)`` pairs of Q ``[out, in]``, L ``[out, r]`` and R ``[r, in]``;
        Q may be ``(codes, scales, zeros)`` (asymmetric; ``zeros=None`` means symmetric)."""
        out_f, in_f = q[0].shape
        rank = L[0].shape[1]
        zeros = q[2] if len(q) > 2 else None
        layer = cls(in_f, out_f, rank, q_bits, q_group, lr_bits, lr_group, bias=bias is not None,
                    bias_dtype=dtype_name(bias.dtype) if bias is not None else "float32", q_sym=zeros is None)
        layer.to(q[0].device)
        layer.q_packed.copy_(pack(q[0], q_bits))
        layer.q_scales.copy_(q[1].to(torch.float16))
        if zeros is not None:
            layer.q_zeros.copy_(zeros.to(torch.uint8))
        layer.l_packed.copy_(pack(L[0], lr_bits))
        layer.l_scales.copy_(L[1].to(torch.float16))
        layer.r_packed.copy_(pack(R[0], lr_bits))
        layer.r_scales.copy_(R[1].to(torch.float16))
        if bias is not None:
            layer.bias.copy_(bias.detach())
        return layer

    @classmethod
    def from_float(cls, Q: torch.Tensor, L: torch.Tensor, R: torch.Tensor, bias: torch.Tensor | None = None, *,
                   q_bits: int = 2, q_group: int | None = 64, lr_bits: int = 4,
                   lr_group: int | None = None, q_sym: bool = True) -> QLRLinear:
        """Round-to-nearest quantize float ``Q``, ``L``, ``R`` and pack them."""
        qc, qs, qz = quantize_groupwise(Q, q_bits, q_group, q_sym)
        lc, ls, _ = quantize_groupwise(L, lr_bits, None, True)
        rc, rs, _ = quantize_groupwise(R, lr_bits, lr_group, True)
        return cls.from_codes((qc, qs, qz), (lc, ls), (rc, rs), bias, q_bits=q_bits, q_group=q_group,
                              lr_bits=lr_bits, lr_group=lr_group)

    # -- CompressedModule contract ----------------------------------------------------------
    def layer_args(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features, "rank": self.rank,
                "q_bits": self.q_bits, "q_group": self.q_group, "lr_bits": self.lr_bits,
                "lr_group": self.lr_group, "q_sym": self.q_sym, "bias": self.bias is not None,
                "bias_dtype": dtype_name(self.bias.dtype) if self.bias is not None else "float32"}

    def logical_params(self) -> int:
        return self.in_features * self.out_features

    def stored_params(self) -> int:
        return self.in_features * self.out_features + self.rank * (self.in_features + self.out_features)

    # -- math -------------------------------------------------------------------------------
    def _deq(self, packed, scales, bits, group, cols, dtype, zeros=None) -> torch.Tensor:
        return dequantize_groupwise(unpack(packed, bits, cols), scales, zeros, bits, group, dtype)

    def factors(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Dequantized ``(Q, L, R)``."""
        Q = self._deq(self.q_packed, self.q_scales, self.q_bits, self.q_group, self.in_features, dtype, self.q_zeros)
        L = self._deq(self.l_packed, self.l_scales, self.lr_bits, None, self.rank, dtype)
        R = self._deq(self.r_packed, self.r_scales, self.lr_bits, self.lr_group, self.in_features, dtype)
        return Q, L, R

    def dense_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        Q, L, R = self.factors(dtype)
        return Q + L @ R

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (y := cpu_forward(self, x)) is not None:  # int4pack Q + bf16 L R on CPU (layers.exec)
            return y
        Q, L, R = self.factors(x.dtype)
        y = F.linear(x, Q, None if self.bias is None else self.bias.to(x.dtype))
        return y + F.linear(F.linear(x, R), L)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, rank={self.rank}, q_bits={self.q_bits}, "
                f"q_group={self.q_group}, q_sym={self.q_sym}, lr_bits={self.lr_bits}, lr_group={self.lr_group}")


__all__ = ["QLRLinear"]
