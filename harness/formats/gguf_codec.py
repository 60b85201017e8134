"""GGUF's 32-value blocks <-> the harness's group-wise codes, exactly.

ggml's layouts (``ggml-common.h``; ``gguf.quants`` is the reference decoder):

- ``Q8_0`` (34 bytes): fp16 ``d``, 32 int8 ``x``: ``w = d * x``;
- ``Q4_0`` (18 bytes): fp16 ``d``, 16 bytes of nibbles (value ``j`` in the low nibble of
  byte ``j``, value ``j + 16`` in its high nibble): ``w = d * (q - 8)``;
- ``Q4_1`` (20 bytes): fp16 ``d``, fp16 ``m``, the same nibbles: ``w = d * q + m``.

The harness stores ``w = (c - z) * s`` (``harness.primitives.quant``) with fp16 scales per
group, so with ``d = s``: Q8_0 is 8-bit symmetric (``c = x + 128``), Q4_0 is 4-bit
symmetric (``c = q``, ``z = 8``), and Q4_1 is QuantLinear's ``mins`` form (``c = q``,
``m`` kept as stored). A harness group that spans several blocks repeats its scale, which
is exact. An asymmetric harness layer (integer zero ``z``) is Q4_1 only where ``m = -z*s``
is an fp16 value; otherwise Q8_0 holds it exactly (``x = c - z``) or its minimum is
rounded, both by request only (``asym=``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.formats import FormatError

QK = 32  # values per block of every exact type
BLOCK_BYTES = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20}
# GGUF type -> (bits, sym, mins) of the QuantLinear / QuantEmbedding that holds it
EXACT = {"Q8_0": (8, True, False), "Q4_0": (4, True, False), "Q4_1": (4, False, True)}
ASYM = ("exact", "q8_0", "round")
TAKES = ("GGUF holds int8/int4/int3/int2 codes whose group is a multiple of 32 (or per channel) as Q8_0/Q4_0/Q4_1, "
         "and dense F32/F16/BF16")


@dataclass
class Codes:
    """A quantized tensor as the harness stores it, unpacked: ``codes`` uint8 ``[rows, width]``,
    fp16 ``scales`` ``[rows, width / 32]`` and one of integer ``zeros`` / fp16 ``mins`` (same
    shape) or neither (symmetric, ``z = 2**(bits-1)``), already at one group per block."""

    codes: torch.Tensor
    scales: torch.Tensor
    bits: int
    zeros: torch.Tensor | None = None
    mins: torch.Tensor | None = None


def _nibbles(q: torch.Tensor) -> torch.Tensor:
    """``[rows, nb, 32]`` values < 16 -> ``[rows, nb, 16]`` bytes in ggml's order."""
    return (q[..., :16] | (q[..., 16:] << 4)).to(torch.uint8)


def _unnibble(qs: torch.Tensor) -> torch.Tensor:
    return torch.cat([qs & 0x0F, qs >> 4], dim=-1)


def _half(b: torch.Tensor) -> torch.Tensor:
    """``[..., 2]`` bytes -> ``[...]`` float16 (little-endian, as GGUF stores them)."""
    return b.contiguous().view(torch.float16).squeeze(-1)


def _bytes(h: torch.Tensor) -> torch.Tensor:
    return h.to(torch.float16).contiguous().unsqueeze(-1).view(torch.uint8)


def decode(blocks: torch.Tensor, qtype: str, width: int) -> Codes:
    """A GGUF tensor's bytes ``[rows, width / 32 * block_bytes]`` -> its codes (no arithmetic)."""
    rows = blocks.shape[0]
    b = blocks.reshape(rows, width // QK, BLOCK_BYTES[qtype])
    d = _half(b[..., 0:2])
    if qtype == "Q8_0":
        return Codes((b[..., 2:] ^ 0x80).reshape(rows, width), d, 8)
    qs, m = (b[..., 2:], None) if qtype == "Q4_0" else (b[..., 4:], _half(b[..., 2:4]))
    return Codes(_unnibble(qs).reshape(rows, width), d, 4, mins=m)


def encode(c: Codes, qtype: str) -> torch.Tensor:
    """Codes already checked by ``plan`` -> GGUF bytes ``[rows, width / 32 * block_bytes]``."""
    rows, width = c.codes.shape
    q = c.codes.to(torch.int16).reshape(rows, width // QK, QK)
    d = _bytes(c.scales)
    if qtype == "Q8_0":
        z = 2 ** (c.bits - 1) if c.zeros is None else c.zeros.to(torch.int16).unsqueeze(-1)
        x = (q - z).to(torch.int8).view(torch.uint8)
        return torch.cat([d, x], -1).reshape(rows, -1)
    if qtype == "Q4_0":
        q = q - 2 ** (c.bits - 1) + 8
        return torch.cat([d, _nibbles(q)], -1).reshape(rows, -1)
    m = c.mins if c.mins is not None else -(c.zeros.float() * c.scales.float())
    return torch.cat([d, _bytes(m), _nibbles(q)], -1).reshape(rows, -1)


def per_block(t: torch.Tensor, group: int | None, width: int) -> torch.Tensor:
    """``[rows, n_groups]`` -> ``[rows, width / 32]``: each group's value repeated per block."""
    nb = width // QK
    return t.expand(-1, nb) if group is None else t.repeat_interleave(group // QK, dim=1)[:, :nb]


def plan(name: str, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
         mins: torch.Tensor | None, bits: int, group: int | None, *, asym: str = "exact"
         ) -> tuple[str, Codes, str | None]:
    """The GGUF type that holds these codes exactly, the codes at one group per block, and
    a note (a repeated scale, a rounded minimum); a one-line ``FormatError`` otherwise."""
    width = codes.shape[1]
    if asym not in ASYM:
        raise FormatError(f"asym={asym!r}; choose one of {', '.join(ASYM)}")
    if width % QK or (group is not None and group % QK):
        raise FormatError(f"{name}: group {group} over {width} inputs does not fall on GGUF's 32-value blocks; "
                          f"{TAKES}")
    blk = Codes(codes, per_block(scales, group, width), bits,
                None if zeros is None else per_block(zeros, group, width),
                None if mins is None else per_block(mins, group, width))
    note = f"{name}: group {group or 'per channel'} scales repeated per 32-block" if group != QK else None
    if bits == 8 or (zeros is not None and asym == "q8_0"):
        if mins is not None:
            raise FormatError(f"{name}: 8-bit codes with float minimums have no GGUF type; {TAKES}")
        if zeros is not None:
            x = blk.codes.to(torch.int16).reshape(len(codes), -1, QK) - blk.zeros.to(torch.int16).unsqueeze(-1)
            if int(x.min()) < -128 or int(x.max()) > 127:
                raise FormatError(f"{name}: asymmetric int8 codes minus their zero leave int8's range, which Q8_0 "
                                  f"needs; {TAKES}")
        if bits < 8:
            note = f"{name}: asymmetric {bits}-bit codes stored exactly as Q8_0 (8.5 bits per weight)"
        return "Q8_0", blk, note
    if bits not in (2, 3, 4):
        raise FormatError(f"{name}: {bits}-bit codes have no GGUF type; {TAKES}")
    if bits < 4:
        note = f"{name}: {bits}-bit codes stored in 4-bit blocks" + (f"; {note.split(': ', 1)[1]}" if note else "")
    if zeros is None and mins is None:
        return "Q4_0", blk, note
    if zeros is not None:
        m = -(blk.zeros.float() * blk.scales.float())
        err = float((m - m.to(torch.float16).float()).abs().max()) if m.numel() else 0.0
        if err and asym != "round":
            raise FormatError(f"{name}: Q4_1 holds the asymmetric zero as an fp16 minimum -z*s, which rounds "
                              f"(max |dw| {err:.3g}); export with asym=q8_0 (exact, 8.5 bits) or asym=round")
        if err:
            note = f"{name}: Q4_1 minimum rounded to fp16 (max |dw| {err:.3g})"
    return "Q4_1", blk, note


__all__ = ["ASYM", "BLOCK_BYTES", "EXACT", "QK", "TAKES", "Codes", "decode", "encode", "per_block", "plan"]
