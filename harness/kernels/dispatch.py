"""Where the packed layers meet the kernels: use Triton when it applies, else say why not.

``maybe_triton_linear`` returns None (never raises) when the Triton path does not apply:
no triton, tensors not on CUDA (and no ``TRITON_INTERPRET=1``), or a shape/dtype/bit width
the kernels do not cover (e.g. 3-bit, or a group size that does not divide in_features: a
ragged last group); ``why_not`` gives the reason for records and docs.
``quant_matmul`` is what ``QuantLinear.forward`` calls on CUDA: Triton when it applies,
the torch reference (``harness.kernels.reference``) otherwise, so it always returns y.

The package (``harness.kernels``) re-exports these names; this module imports only its
sibling modules, never the package.
"""
from __future__ import annotations

import torch

from harness.kernels._build import triton_missing_reason
from harness.kernels.reference import qlr_matmul_ref, quant_matmul_ref


def why_not(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, bits: int,
            group: int | None, bias: torch.Tensor | None = None, in_features: int | None = None) -> str | None:
    """None when the Triton kernel can run this call, else a one-line reason."""
    reason = triton_missing_reason()
    if reason:
        return reason
    from harness.kernels.w4a16 import KernelUnsupported, check_quant_args

    try:
        check_quant_args(x, qweight, scales, zeros, bits, group, in_features, bias)
    except KernelUnsupported as e:
        return str(e)
    return None


def maybe_triton_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                        bits: int, group: int | None, bias: torch.Tensor | None = None,
                        in_features: int | None = None) -> torch.Tensor | None:
    """``x @ dequant(Q).T + bias`` by Triton, or None when the kernel does not apply."""
    if why_not(x, qweight, scales, zeros, bits, group, bias, in_features) is not None:
        return None
    from harness.kernels.w4a16 import wq_matmul

    if bias is not None and bias.dtype != x.dtype:
        bias = bias.to(x.dtype)
    return wq_matmul(x, qweight, scales, zeros, bits, group, in_features, bias)


def quant_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                 bits: int, group: int | None, in_features: int | None = None) -> torch.Tensor:
    """QuantLinear's entry point (no bias: the layer adds it): Triton if possible, else torch."""
    y = maybe_triton_linear(x, qweight, scales, zeros, bits, group, None, in_features)
    if y is None:
        y = quant_matmul_ref(x, qweight, scales, zeros, bits, group, in_features)
    return y


def maybe_triton_qlr(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                     bits: int, group: int | None, L: torch.Tensor, R: torch.Tensor, bias: torch.Tensor | None = None,
                     in_features: int | None = None) -> torch.Tensor | None:
    """CALDERA ``dequant(Q) x + L (R x) + bias`` by Triton, or None when it does not apply."""
    if why_not(x, qweight, scales, zeros, bits, group, bias, in_features) is not None:
        return None
    from harness.kernels.qlr import KernelUnsupported, check_device, check_lowrank
    from harness.kernels.qlr import qlr_matmul as triton_qlr

    try:
        check_lowrank(L, R, qweight.shape[0], x.shape[-1])
        check_device(x, L, R)
    except KernelUnsupported:
        return None
    if bias is not None and bias.dtype != x.dtype:
        bias = bias.to(x.dtype)
    return triton_qlr(x, qweight, scales, zeros, bits, group, L, R, in_features, bias)


def qlr_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
               bits: int, group: int | None, L: torch.Tensor, R: torch.Tensor, in_features: int | None = None,
               bias: torch.Tensor | None = None) -> torch.Tensor:
    """QLRLinear's entry point: Triton if possible, else the torch reference."""
    y = maybe_triton_qlr(x, qweight, scales, zeros, bits, group, L, R, bias, in_features)
    if y is None:
        y = qlr_matmul_ref(x, qweight, scales, zeros, bits, group, L, R, in_features, bias)
    return y


__all__ = ["maybe_triton_linear", "maybe_triton_qlr", "qlr_matmul", "quant_matmul", "why_not"]
