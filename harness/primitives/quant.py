"""Group-wise uniform (integer) quantization math shared by the packed layers, the kernels'
torch references and the techniques (RTN, GPTQ, AWQ, QAT, CALDERA, the KV cache).

Convention: ``w ≈ (q - z) * s`` with integer codes ``q`` in ``[0, 2**bits - 1]`` (uint8),
one scale ``s`` and zero ``z`` per (output row, group of ``group`` consecutive inputs);
``group=None`` means one group spanning the whole row (per output channel). A group size
need not divide the row: there are ``ceil(in / group)`` groups and the last one holds the
remaining ``in % group`` inputs (a "ragged" last group). Its parameters are those of its
real inputs only: it is computed zero-padded to ``group`` columns, and zero padding
changes neither the absmax nor the ``[min(w, 0), max(w, 0)]`` range. Codes are returned
(and stored) for exactly ``in`` inputs; nothing padded is kept.

- Symmetric (``sym=True``): the zero is implicit, ``z = 2**(bits-1)``, and
  ``s = absmax / (2**(bits-1) - 0.5)`` (the GPTQ convention: the grid ``-2**(b-1) .. 2**(b-1)-1``
  spans ``[-absmax, absmax]`` up to half a step, so all ``2**bits`` levels are used and the
  rounding error is still at most ``s/2``). No zeros are stored.
- Asymmetric (``sym=False``): the range ``[min(w, 0), max(w, 0)]`` (zero is always exactly
  representable) gives ``s = (max - min) / (2**bits - 1)`` and a stored uint8 zero code
  ``z = round(-min / s)``.

Scales are rounded to ``scale_dtype`` (float16 by default, what QuantLinear stores) *before*
the codes are computed, so the codes are optimal for the stored scales and the
quantize-dequantize error is ``|w - ŵ| <= s/2`` per element exactly (up to float rounding).
"""
from __future__ import annotations

import math

import torch

from harness.config import SpecError

QUANT_BITS = (2, 3, 4, 8)
_MIN_SCALE = 1e-6


def check_quant_args(bits: int, group: int | None, in_features: int | None = None) -> None:
    """One-line SpecErrors for unsupported bits or a group size below 1.

    Any ``group >= 1`` works with any ``in_features`` (a group wider than the row is one
    group per row; a non-divisor leaves a ragged last group). ``in_features`` is accepted
    for callers that validate a concrete layer; it must be positive.
    """
    if bits not in QUANT_BITS:
        raise SpecError(f"bits={bits} is not supported; choose one of {', '.join(map(str, QUANT_BITS))}")
    if group is not None and group < 1:
        raise SpecError(f"group={group} must be a positive integer or none (per output channel)")
    if in_features is not None and in_features < 1:
        raise SpecError(f"in_features={in_features} must be >= 1")


def n_groups(in_features: int, group: int | None) -> int:
    """Groups per row: ``ceil(in / group)`` (the last one may be partial), 1 for ``None``."""
    return 1 if group is None else math.ceil(in_features / group)


def group_width(in_features: int, group: int | None) -> int:
    """Inputs per (full) group: ``group``, or the whole row for ``None``."""
    return in_features if group is None else int(group)


def pad_to_groups(w: torch.Tensor, group: int | None) -> torch.Tensor:
    """``w`` ``[..., in]`` zero-padded on the right to ``n_groups * group`` columns (``w``
    itself when ``group`` divides ``in``), ready to ``view(..., n_groups, group)``."""
    in_f = w.shape[-1]
    width = n_groups(in_f, group) * group_width(in_f, group)
    if width == in_f:
        return w
    return torch.cat([w, w.new_zeros(*w.shape[:-1], width - in_f)], dim=-1)


def qparams(w: torch.Tensor, bits: int, sym: bool, scale_dtype: torch.dtype = torch.float16
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero for each row of ``w`` ``[rows, cols]`` (one group per row).

    Returns ``(scale [rows], zero [rows])`` as float32 (zero is an integer-valued float);
    the scale is already rounded to ``scale_dtype``.
    """
    w = w.float()
    maxq = 2 ** bits - 1
    if sym:
        absmax = w.abs().amax(dim=1)
        scale = absmax / (2 ** (bits - 1) - 0.5)
    else:
        lo = w.amin(dim=1).clamp(max=0)
        hi = w.amax(dim=1).clamp(min=0)
        scale = (hi - lo) / maxq
    scale = torch.where(scale > _MIN_SCALE, scale, torch.full_like(scale, _MIN_SCALE))
    rounded = scale.to(scale_dtype)
    # Round the scale *up* to the storage dtype so the grid still covers the range and the
    # clamped extremes stay within half a step.
    up = torch.nextafter(rounded, torch.full_like(rounded, float("inf")))
    scale = torch.where(rounded.float() < scale, up, rounded).float()
    if sym:
        zero = torch.full_like(scale, float(2 ** (bits - 1)))
    else:
        zero = torch.round(-lo / scale).clamp(0, maxq)
    return scale, zero


def quantize_to(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes of ``w`` given broadcastable ``scale`` and ``zero`` (float32 result)."""
    return torch.clamp(torch.round(w.float() / scale) + zero, 0, 2 ** bits - 1)


def fake_quant(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Quantize then dequantize (float result) with the given parameters."""
    return (quantize_to(w, scale, zero, bits) - zero) * scale


def _grouped(w: torch.Tensor, group: int | None) -> tuple[torch.Tensor, int]:
    """``[out, in]`` -> ``[out * n_groups, g]`` rows, the ragged last group zero-padded."""
    out_f, in_f = w.shape
    g = group_width(in_f, group)
    return pad_to_groups(w, group).reshape(out_f * n_groups(in_f, group), g), g


def quantize_groupwise(w: torch.Tensor, bits: int, group: int | None = 128, sym: bool = True, *,
                       scale_dtype: torch.dtype = torch.float16
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Round-to-nearest group-wise quantization of ``w`` ``[out, in]``.

    Returns ``(codes uint8 [out, in], scales scale_dtype [out, n_groups], zeros uint8
    [out, n_groups] or None when sym)`` with ``n_groups = ceil(in / group)``.
    """
    if w.dim() != 2:
        raise SpecError(f"quantize_groupwise expects a 2-D [out, in] weight, got {tuple(w.shape)}")
    out_f, in_f = w.shape
    check_quant_args(bits, group, in_f)
    wg, g = _grouped(w.detach().float(), group)
    scale, zero = qparams(wg, bits, sym, scale_dtype)
    codes = quantize_to(wg, scale[:, None], zero[:, None], bits)
    ng = n_groups(in_f, group)
    codes = codes.reshape(out_f, ng * g)[:, :in_f].to(torch.uint8)
    scales = scale.reshape(out_f, ng).to(scale_dtype)
    zeros = None if sym else zero.reshape(out_f, ng).to(torch.uint8)
    return codes, scales, zeros


def expand_groups(t: torch.Tensor, group: int | None, in_features: int) -> torch.Tensor:
    """``[out, n_groups]`` -> ``[out, in]`` by repeating each group's value (the ragged last
    group's value covers only its ``in % group`` inputs). Differentiable in ``t``."""
    ng = n_groups(in_features, group)
    if t.shape[-1] != ng:
        raise ValueError(f"expected {ng} groups for in_features={in_features}, group={group}; "
                         f"got a tensor of shape {tuple(t.shape)}")
    if group is None:
        return t.expand(*t.shape[:-1], in_features)
    t = t.repeat_interleave(group, dim=-1)
    return t if t.shape[-1] == in_features else t[..., :in_features]


def dequantize_groupwise(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, bits: int,
                         group: int | None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(q - z) * s`` as a dense ``[out, in]`` tensor of ``dtype`` (scales/zeros ``[out, n_groups]``)."""
    out_f, in_f = codes.shape
    g = group_width(in_f, group)
    ng = n_groups(in_f, group)
    if scales.shape != (out_f, ng) or (zeros is not None and zeros.shape != (out_f, ng)):
        raise ValueError(f"scales/zeros must be [{out_f}, {ng}] for in_features={in_f}, group={group}; got "
                         f"{tuple(scales.shape)} / {None if zeros is None else tuple(zeros.shape)}")
    q = pad_to_groups(codes.to(torch.float32), group).view(out_f, ng, g)
    z = (torch.full((out_f, ng), float(2 ** (bits - 1)), device=codes.device) if zeros is None
         else zeros.to(torch.float32))
    w = (q - z.unsqueeze(-1)) * scales.to(torch.float32).unsqueeze(-1)
    w = w.reshape(out_f, ng * g)
    return (w if ng * g == in_f else w[:, :in_f]).to(dtype)


def rtn_fake_quant(w: torch.Tensor, bits: int, group: int | None, sym: bool) -> torch.Tensor:
    """Quantize-dequantize ``w`` with RTN (same dtype as ``w``): a convenience for searches."""
    codes, scales, zeros = quantize_groupwise(w, bits, group, sym)
    return dequantize_groupwise(codes, scales, zeros, bits, group, w.dtype)


__all__ = [
    "QUANT_BITS",
    "check_quant_args",
    "dequantize_groupwise",
    "expand_groups",
    "fake_quant",
    "group_width",
    "n_groups",
    "pad_to_groups",
    "qparams",
    "quantize_groupwise",
    "quantize_to",
    "rtn_fake_quant",
]
