"""CALDERA's ``y = dequant(Q) x + L (R x)`` with the low-rank term fused into the Q GEMV.

``Q`` is a packed QuantLinear-format matrix (2-, 4- or 8-bit, group-wise scales, optional
zeros; the group must divide K: a ragged last group raises ``KernelUnsupported`` and
``dispatch.qlr_matmul`` uses the torch reference); ``L`` ``[N, r]`` and ``R`` ``[r, K]``
are dense float tensors (a layer that stores them quantized dequantizes these two small
factors first).

Decode (M <= ``GEMV_MAX_M``) runs two kernels: ``t = R x`` as split-K partials
(``[splits, M, r]`` fp32, enough programs to fill the GPU even for r = 64), then the
quantized GEMV whose epilogue sums the partials and adds ``L[n, :] . t`` for its rows,
so ``L R`` is never materialised and y is written once. Prefill (larger M) uses the GEMM
kernel for Q and two torch matmuls for the thin low-rank product.
"""
from __future__ import annotations

import torch

from harness.kernels._build import LazyKernel
from harness.kernels.w4a16 import (
    GEMV_MAX_M,
    KernelUnsupported,
    _launch,
    _next_pow2,
    check_device,
    check_quant_args,
)

try:
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover
    triton = tl = None  # type: ignore[assignment]


def _rx_kernel(x_ptr, r_ptr, t_ptr, RANK, K, K_PER_SPLIT, stride_xm, stride_rr, stride_ts, stride_tm,
               BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_r = tl.program_id(0)
    m = tl.program_id(1)
    sp = tl.program_id(2)
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    r_mask = offs_r < RANK
    k_lo = sp * K_PER_SPLIT
    acc = tl.zeros((BLOCK_R, BLOCK_K), dtype=tl.float32)
    for k0 in range(k_lo, k_lo + K_PER_SPLIT, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = (offs_k < K) & (offs_k < k_lo + K_PER_SPLIT)
        xv = tl.load(x_ptr + m * stride_xm + offs_k, mask=k_mask, other=0.0).to(tl.float32)
        rv = tl.load(r_ptr + offs_r[:, None] * stride_rr + offs_k[None, :],
                     mask=r_mask[:, None] & k_mask[None, :], other=0.0).to(tl.float32)
        acc += rv * xv[None, :]
    tl.store(t_ptr + sp * stride_ts + m * stride_tm + offs_r, tl.sum(acc, axis=1), mask=r_mask)


RX = LazyKernel(
    _rx_kernel, key=["RANK", "K_PER_SPLIT"],
    configs=[({"BLOCK_R": r, "BLOCK_K": k}, w, 3) for r, k, w in
             [(16, 128, 4), (16, 256, 4), (32, 128, 4), (32, 256, 8), (64, 128, 8)]],
    interpret_config={"BLOCK_R": 16, "BLOCK_K": 32},
    prune=lambda c, a: c["BLOCK_R"] <= max(16, _next_pow2(a["RANK"])) and c["BLOCK_K"] <= a["K_PER_SPLIT"])

RX_SPLIT_K = 512  # input features per split of t = R x


def check_lowrank(L: torch.Tensor, R: torch.Tensor, n: int, k: int) -> int:
    """Shapes and dtypes of the low-rank factors; returns the rank."""
    if L.dim() != 2 or R.dim() != 2 or L.shape[0] != n or R.shape[1] != k or L.shape[1] != R.shape[0]:
        raise KernelUnsupported(f"low-rank factors must be L [{n}, r] and R [r, {k}], "
                                f"got L {tuple(L.shape)} and R {tuple(R.shape)}")
    for name, t in (("L", L), ("R", R)):
        if t.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise KernelUnsupported(f"{name} dtype {t.dtype} is not supported; use float16, bfloat16 or float32")
    return L.shape[1]


def lowrank_in(x2: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """Split-K partials of ``t = x2 @ R.T``: fp32 ``[splits, M, r]`` (sum over dim 0 = t)."""
    m, k = x2.shape
    rank = R.shape[0]
    splits = max(1, min(64, k // RX_SPLIT_K))
    kps = triton.cdiv(k, splits)
    t = torch.empty(splits, m, rank, device=x2.device, dtype=torch.float32)
    R = R.contiguous()
    RX[lambda meta: (triton.cdiv(rank, meta["BLOCK_R"]), m, splits)](
        x2, R, t, rank, k, kps, x2.stride(0), R.stride(0), t.stride(0), t.stride(1))
    return t


def qlr_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
               bits: int, group: int | None, L: torch.Tensor, R: torch.Tensor, in_features: int | None = None,
               bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ dequant(Q).T + (x @ R.T) @ L.T (+ bias)``; ``x`` may have leading dims."""
    n, k, g = check_quant_args(x, qweight, scales, zeros, bits, group, in_features, bias)
    check_lowrank(L, R, n, k)
    check_device(x, L, R)
    x2 = x.reshape(-1, k).contiguous()
    if x2.shape[0] == 0:
        return x.new_empty(*x.shape[:-1], n)
    if x2.shape[0] <= GEMV_MAX_M:
        t = lowrank_in(x2, R)
        y = _launch(x2, qweight, scales, zeros, bits, g, n, k, bias, lowrank=(L.contiguous(), t))
    else:
        y = _launch(x2, qweight, scales, zeros, bits, g, n, k, bias)
        y = torch.addmm(y, x2 @ R.T.to(x2.dtype), L.T.to(x2.dtype))
    return y.reshape(*x.shape[:-1], n)


__all__ = ["RX", "check_lowrank", "lowrank_in", "qlr_matmul"]
