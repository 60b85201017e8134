"""Triton kernels for the packed layers, with a torch reference of the same math.

- ``w4a16`` / ``w8a16``: group-wise dequantizing GEMV (decode) and GEMM (prefill) on
  QuantLinear's packed buffers (2/4/8-bit; 3-bit stays on the torch reference).
- ``qlr``: CALDERA ``y = dequant(Q) x + L (R x)`` with the low-rank term fused into the GEMV.
- ``dispatch``: what the layers call (``quant_matmul``, ``maybe_triton_linear``, ...).
- ``reference``: the torch math every kernel is tested against.
- ``cpu``: torch's CPU int4pack / int8pack matmuls (bf16 activations) and the layouts they
  read; which layer uses which is planned in ``harness.layers.exec``.
- ``_build``: lazy Triton construction (compiled or ``TRITON_INTERPRET=1``); ``aot``:
  compiling for a GPU target without one (static PTX/SASS facts, no speed).

Measuring the kernels is not done here: the micro-benchmark behind ``harness kernels
bench`` is ``harness.measure.kernel_bench``, the CUDA/NVML helpers ``harness.measure.gpu``.

Importing this package never imports triton; kernels are built on first use, as
compiled CUDA kernels or, with ``TRITON_INTERPRET=1``, under Triton's CPU interpreter.
"""
from harness.kernels.dispatch import (
    maybe_triton_linear,
    maybe_triton_qlr,
    qlr_matmul,
    quant_matmul,
    why_not,
)

__all__ = ["maybe_triton_linear", "maybe_triton_qlr", "qlr_matmul", "quant_matmul", "why_not"]
