"""CPU kernels behind the packed formats: torch's own int4pack / int8pack matmuls.

``torch.ops.aten._weight_int4pack_mm_for_cpu`` and ``_weight_int8pack_mm`` read packed
weights directly (no dense ``[out, in]`` matrix per call). On x86 they are vectorised for
**bfloat16 activations** only (fp32 activations run ~10x slower), so every function here
casts ``x`` to bf16, runs the kernel (fp32 accumulation inside, bf16 output) and returns
``x.dtype``. Expected error against the fp32 reference: bf16 rounding of the activations,
of the group scales/zeros and of the output, i.e. a relative error of a few 2**-8 (the
tests bound it at 2% of the output's max magnitude per layer).

Layouts are made once from the portable buffers (``harness.primitives.packing``):

- int4pack: codes of 2, 3 or 4 bits widen exactly into 4-bit codes; the kernel computes
  ``w = (q - 8) * s + z_f`` per group, so the harness's ``w = (q - z) * s`` becomes
  ``z_f = (8 - z) * s`` (4-bit; 0 when symmetric) or, below 4 bits, codes ``q - z + 8``
  with ``z_f = 0`` (no bf16 rounding of a zero term). One scale per output channel is a group of up to 256 inputs
  with the scale repeated. Layout: ``N*K/2`` bytes plus 4 bytes per (group, row).
- int8pack: per-output-channel scales only; codes ``q - 128`` as int8. An asymmetric zero
  is a rank-1 correction ``sum(x) * (128 - z) * s`` added to the output.

``*_why_not`` return None when the kernel takes the shape, else a one-line reason.
"""
from __future__ import annotations

import torch

INT4_GROUPS = (32, 64, 128, 256)


def _op_missing(name: str) -> str | None:
    return None if hasattr(torch.ops.aten, name) else f"torch {torch.__version__} has no aten.{name}"


def int4_group(in_features: int, group: int | None) -> int | None:
    """The kernel group size for a layer's ``group`` (per-channel: the largest of
    256/128/64/32 dividing ``in_features``), or None when there is none."""
    if group is None:
        return next((g for g in reversed(INT4_GROUPS) if in_features % g == 0), None)
    return group if group in INT4_GROUPS and in_features % group == 0 else None


def int4pack_why_not(out_features: int, in_features: int, bits: int, group: int | None) -> str | None:
    """None when ``_weight_int4pack_mm_for_cpu`` can run this layer, else why not."""
    missing = _op_missing("_weight_int4pack_mm_for_cpu") or _op_missing("_convert_weight_to_int4pack_for_cpu")
    if missing:
        return missing
    if bits > 4:
        return f"{bits}-bit codes do not fit the 4-bit kernel"
    if out_features % 16:
        return f"out_features={out_features} is not a multiple of 16"
    if int4_group(in_features, group) is None:
        return (f"group={group} with in_features={in_features}: the kernel needs a group of "
                f"{'/'.join(map(str, INT4_GROUPS))} dividing in_features (no ragged last group)")
    return None


def int8pack_why_not(out_features: int, in_features: int) -> str | None:
    """None when ``_weight_int8pack_mm`` can run this layer, else why not (it reads out of
    bounds on in_features that are not a multiple of 32 in torch 2.13: segfaults seen)."""
    missing = _op_missing("_weight_int8pack_mm")
    if missing:
        return missing
    if in_features % 32:
        return f"in_features={in_features} is not a multiple of 32"
    return None


def pack_int4(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, bits: int,
              group: int | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(packed weight, bf16 scale-and-zero ``[K/g, N, 2]``, g) from unpacked codes
    ``[N, K]`` (uint8, < 2**bits), float16 ``scales``/uint8 ``zeros`` ``[N, n_groups]``."""
    n, k = codes.shape
    g = int4_group(k, group)
    assert g is not None, "call int4pack_why_not first"
    s = scales.float()
    z = (torch.full_like(s, 2 ** (bits - 1)) if zeros is None else zeros.float())
    if group is None:  # one scale per row: repeat it over every kernel group
        s, z = s.expand(n, k // g), z.expand(n, k // g)
    if bits < 4:  # fold the zero into the codes: q - z + 8 lies in [1, 15], so z_f = 0 exactly
        codes = codes.to(torch.int32) - z.repeat_interleave(g, 1).to(torch.int32) + 8
        z = torch.full_like(s, 8.0)
    zf = (8 - z) * s
    sz = torch.stack([s.t(), zf.t()], -1).contiguous().to(torch.bfloat16)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 1)
    return packed, sz, g


def aligned(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when contiguous and 64-byte aligned, else an aligned copy: the int8pack
    kernel crashed (torch 2.13) on a weight mapped from a safetensors file at offset 8."""
    return t if t.is_contiguous() and t.data_ptr() % 64 == 0 else t.clone(memory_format=torch.contiguous_format)


def int4_mm(x: torch.Tensor, packed: torch.Tensor, group: int, scale_zeros: torch.Tensor,
            out_features: int) -> torch.Tensor:
    """``x @ w.T`` through the int4pack kernel (bf16 activations), any leading dims."""
    x2 = aligned(x.reshape(-1, x.shape[-1]).to(torch.bfloat16))
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, packed, group, scale_zeros)
    return y.to(x.dtype).reshape(*x.shape[:-1], out_features)


def int8_mm(x: torch.Tensor, q8: torch.Tensor, scales: torch.Tensor, row_offset: torch.Tensor | None = None
            ) -> torch.Tensor:
    """``x @ (q8 * scales).T`` through the int8pack kernel (bf16 activations); with
    ``row_offset`` [N] fp32 also ``+ sum(x) * row_offset`` (an asymmetric zero)."""
    x2 = aligned(x.reshape(-1, x.shape[-1]).to(torch.bfloat16))
    y = torch.ops.aten._weight_int8pack_mm(x2, q8, scales)
    if row_offset is not None:
        y = y.float() + x2.float().sum(-1, keepdim=True) * row_offset
    return y.to(x.dtype).reshape(*x.shape[:-1], q8.shape[0])


def bf16_supported_reason() -> str | None:
    """Why bf16 kernels would not be vectorised here (None on x86 with AVX2/AVX512 or ARM)."""
    cap = torch.backends.cpu.get_cpu_capability()
    return f"CPU capability {cap}: no vectorised bf16" if cap in ("DEFAULT", "NO AVX") else None


__all__ = ["INT4_GROUPS", "aligned", "bf16_supported_reason", "int4_group", "int4_mm", "int4pack_why_not", "int8_mm",
           "int8pack_why_not", "pack_int4"]
