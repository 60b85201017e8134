"""W8A16: int8 weight-only matmul on QuantLinear's 8-bit buffers (one code per byte).

It is the ``harness.kernels.w4a16`` kernel specialised at ``BITS=8`` (``PER=1``: the
unpack loop is a single iteration with no shift, and the byte is the code), so the two
cannot drift apart; a separate module keeps the public entry point and its docs.
Symmetric layers use the implicit zero 128; asymmetric ones store uint8 zero codes.
"""
from __future__ import annotations

import torch

from harness.kernels.w4a16 import wq_matmul


def w8a16_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                 group: int | None, in_features: int | None = None, bias: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """Group-wise int8 weight x 16-bit activation matmul (GEMV for decode, GEMM for prefill)."""
    return wq_matmul(x, qweight, scales, zeros, 8, group, in_features, bias)


__all__ = ["w8a16_matmul"]
