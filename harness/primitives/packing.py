"""Bit packing of low-bit integer codes along the input dimension.

Layout (little-endian, the contract the Triton kernels and CALDERA rely on), for a code
matrix ``[out, in]`` of values in ``[0, 2**bits)`` packed row by row:

- 8-bit: identity (one code per byte).
- 4-bit: element ``2j`` in the LOW nibble of byte ``j``, ``2j+1`` in the HIGH nibble.
- 2-bit: four per byte, element ``4j+k`` at bits ``2k..2k+1`` of byte ``j``.
- 3-bit: a dense bit stream, eight codes in three bytes: element ``i`` occupies bits
  ``3i..3i+2`` of the row's little-endian bit stream (bit ``b`` is bit ``b % 8`` of byte
  ``b // 8``). The row is padded with zero codes to a multiple of 8 elements.

Packed width is ``ceil(in * bits / 8)`` bytes per row (for 3-bit: ``3 * ceil(in / 8)``,
the same thing after padding). ``unpack(pack(c, b), b, in) == c`` for every shape.
"""
from __future__ import annotations

import math

import torch

from harness.config import SpecError

SUPPORTED_BITS = (2, 3, 4, 8)


def check_bits(bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise SpecError(f"bits={bits} is not supported for packing; choose one of "
                        f"{', '.join(map(str, SUPPORTED_BITS))}")


def packed_width(in_features: int, bits: int) -> int:
    """Bytes per row after packing ``in_features`` codes of ``bits`` bits."""
    check_bits(bits)
    if bits == 3:
        return 3 * math.ceil(in_features / 8)
    return math.ceil(in_features * bits / 8)


def _pad_cols(x: torch.Tensor, multiple: int) -> torch.Tensor:
    pad = (-x.shape[-1]) % multiple
    if pad:
        x = torch.cat([x, x.new_zeros(*x.shape[:-1], pad)], dim=-1)
    return x


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack uint8 codes ``[out, in]`` (values < 2**bits) into uint8 ``[out, packed_width]``."""
    check_bits(bits)
    if codes.dim() != 2:
        raise SpecError(f"pack expects a 2-D [out, in] code matrix, got shape {tuple(codes.shape)}")
    c = codes.to(torch.uint8)
    if c.numel() and int(c.max()) >= 2 ** bits:
        raise SpecError(f"code {int(c.max())} does not fit in {bits} bits")
    if bits == 8:
        return c.contiguous()
    rows = c.shape[0]
    if bits in (2, 4):
        per = 8 // bits
        c = _pad_cols(c, per).view(rows, -1, per).to(torch.int32)
        shifts = torch.arange(per, dtype=torch.int32, device=c.device) * bits
        return (c << shifts).sum(-1).to(torch.uint8)
    # 3-bit: 8 codes -> 24-bit little-endian word -> 3 bytes
    c = _pad_cols(c, 8).view(rows, -1, 8).to(torch.int32)
    shifts = torch.arange(8, dtype=torch.int32, device=c.device) * 3
    word = (c << shifts).sum(-1)  # [rows, n8] < 2**24
    out = torch.stack([(word >> s) & 0xFF for s in (0, 8, 16)], dim=-1)
    return out.reshape(rows, -1).to(torch.uint8)


def unpack(packed: torch.Tensor, bits: int, in_features: int) -> torch.Tensor:
    """Inverse of ``pack``: uint8 ``[out, packed_width]`` -> uint8 codes ``[out, in_features]``."""
    check_bits(bits)
    if packed.dim() != 2:
        raise SpecError(f"unpack expects a 2-D packed matrix, got shape {tuple(packed.shape)}")
    want = packed_width(in_features, bits)
    if packed.shape[1] != want:
        raise SpecError(f"packed width {packed.shape[1]} does not match in_features={in_features} "
                        f"at {bits} bits (expected {want})")
    rows = packed.shape[0]
    if bits == 8:
        return packed.to(torch.uint8)
    p = packed.to(torch.int32)
    if bits in (2, 4):
        per = 8 // bits
        shifts = torch.arange(per, dtype=torch.int32, device=p.device) * bits
        c = (p.unsqueeze(-1) >> shifts) & (2 ** bits - 1)
        return c.reshape(rows, -1)[:, :in_features].to(torch.uint8)
    p = p.view(rows, -1, 3)
    word = p[..., 0] | (p[..., 1] << 8) | (p[..., 2] << 16)
    shifts = torch.arange(8, dtype=torch.int32, device=p.device) * 3
    c = (word.unsqueeze(-1) >> shifts) & 0x7
    return c.reshape(rows, -1)[:, :in_features].to(torch.uint8)


__all__ = ["SUPPORTED_BITS", "check_bits", "pack", "packed_width", "unpack"]
