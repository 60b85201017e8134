"""Weight-only quantized matmul kernels (W4A16, and the same code at 2 and 8 bits).

``y[m, n] = sum_k x[m, k] * (q[n, k] - z[n, k // group]) * s[n, k // group] (+ bias[n])``
on the packed ``QuantLinear`` buffers (see ``harness.kernels.reference`` for the layout).

- **GEMV** (M <= ``GEMV_MAX_M``, decode): memory-bound. Each program owns ``BLOCK_N``
  output rows and walks K in chunks of ``BLOCK_KW`` int32 words (the packed row viewed as
  words: 128-bit loads, each weight byte read once). Code ``j`` of a word becomes the float
  ``1 + q / 2**bits`` by OR-ing it into the top mantissa bits of 1.0 (no int->float
  conversion, which issues on a reduced-throughput pipe), multiplied by its activation with one
  FMA, and accumulated in fp32; per chunk the group scale/zero are applied once through
  ``sum s (q - z) x = s (2**bits sum f x - (2**bits + z) sum x)``. When a chunk lies inside
  one group (``TILE_IN_GROUP``) the scale is one value per row, else gathered per word.
  With ``HAS_LR`` the same kernel adds CALDERA's ``L t`` (``t = R x``) in the epilogue.
- **GEMM** (larger M, prefill): tiles of x ``[BLOCK_M, BLOCK_K]`` times a dequantized weight
  tile ``[BLOCK_K, BLOCK_N]`` (codes unpacked in registers, cast to x's dtype) via
  ``tl.dot`` with an fp32 accumulator.

Both are ``@triton.autotune``d over a few block configs (keyed on the shape, bits and
group; GEMM keys on M rounded up to a power of two so every prompt length does not
re-tune). Shapes/dtypes the kernels do not handle (3-bit codes, a group that does not
divide K, i.e. a ragged last group, ...) raise ``KernelUnsupported`` (a ValueError) naming
the value; ``harness.kernels.dispatch`` turns that into "use torch".
"""
from __future__ import annotations

import torch

from harness.kernels._build import (
    LazyKernel,
    interpreting,
    mode_mismatch_reason,
    triton_missing_reason,
)

try:  # the kernel bodies reference ``tl``; without triton they are never built
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - exercised only where triton is missing
    triton = tl = None  # type: ignore[assignment]

SUPPORTED_BITS = (2, 4, 8)
ACT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
GEMV_MAX_M = 2  # rows handled by the GEMV kernel (weights re-read per row); above: GEMM


class KernelUnsupported(ValueError):
    """The kernel cannot run this input (shape, dtype, device, missing triton)."""


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _gemv_kernel(x_ptr, q_ptr, s_ptr, z_ptr, b_ptr, l_ptr, t_ptr, y_ptr,
                 N, KW, RANK, T_SPLITS, stride_xm, stride_qn, stride_sn, stride_zn, stride_ln, stride_ts,
                 stride_tm, stride_ym,
                 BITS: tl.constexpr, CPW: tl.constexpr, GROUP: tl.constexpr, HAS_ZEROS: tl.constexpr,
                 HAS_BIAS: tl.constexpr, HAS_LR: tl.constexpr, BLOCK_R: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_KW: tl.constexpr, X_SPLIT: tl.constexpr,
                 TILE_IN_GROUP: tl.constexpr):
    # q_ptr: the packed rows viewed as int32 words (KW words, CPW = 32 // BITS codes each).
    pid_n = tl.program_id(0)
    m = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    x_row = x_ptr + m * stride_xm
    acc = tl.zeros((BLOCK_N, BLOCK_KW), dtype=tl.float32)
    for kw0 in range(0, KW, BLOCK_KW):
        offs_kw = kw0 + tl.arange(0, BLOCK_KW)
        kw_mask = offs_kw < KW
        word = tl.load(q_ptr + offs_n[:, None] * stride_qn + offs_kw[None, :],
                       mask=n_mask[:, None] & kw_mask[None, :], other=0)
        # Code q -> the float 1 + q / 2**BITS by writing q into the top mantissa bits of
        # 1.0 (no int->float conversion, one FMA per code); undone once per chunk below:
        # sum (q - z) x = 2**BITS sum f x - (2**BITS + z) sum x.
        part = tl.zeros((BLOCK_N, BLOCK_KW), dtype=tl.float32)
        xsum = tl.zeros((BLOCK_KW,), dtype=tl.float32)
        if X_SPLIT and CPW == 8:
            # 4-bit: load the chunk's activations as one contiguous [BLOCK_KW, 8] tile (16-byte
            # loads) and split it into the 8 per-code columns, instead of 8 strided 2-byte loads.
            x2d = tl.load(x_row + offs_kw[:, None] * CPW + tl.arange(0, CPW)[None, :], mask=kw_mask[:, None],
                          other=0.0).to(tl.float32)
            ev, od = tl.split(tl.reshape(x2d, (BLOCK_KW, 4, 2)))
            e04, e26 = tl.split(tl.reshape(ev, (BLOCK_KW, 2, 2)))
            o15, o37 = tl.split(tl.reshape(od, (BLOCK_KW, 2, 2)))
            x0, x4 = tl.split(e04)
            x2, x6 = tl.split(e26)
            x1, x5 = tl.split(o15)
            x3, x7 = tl.split(o37)
            xsum = tl.sum(x2d, axis=1)
            part += ((((word >> 0) & 15) << 19) | 0x3F800000).to(tl.float32, bitcast=True) * x0[None, :]
            part += ((((word >> 4) & 15) << 19) | 0x3F800000).to(tl.float32, bitcast=True) * x1[None, :]
            part += ((((word >> 8) & 15) << 19) | 0x3F800000).to(tl.float32, bitcast=True) * x2[None, :]
            part += ((((word >> 12) & 15) << 19) | 0x3F800000).to(tl.float32, bitcast=True) * x3[None, :]
            part += ((((word >> 16) & 15) << 19) | 0x3F800000).to(tl.float32, bitcast=True) * x4[None, :]
            part += ((((word >> 20) & 15) << 19) | 0x3F800000).to(tl.float32, bitcast=True) * x5[None, :]
            part += ((((word >> 24) & 15) << 19) | 0x3F800000).to(tl.float32, bitcast=True) * x6[None, :]
            part += ((((word >> 28) & 15) << 19) | 0x3F800000).to(tl.float32, bitcast=True) * x7[None, :]
        else:
            for j in tl.static_range(CPW):
                f = ((((word >> (j * BITS)) & ((1 << BITS) - 1)) << (23 - BITS)) | 0x3F800000).to(
                    tl.float32, bitcast=True)
                xj = tl.load(x_row + offs_kw * CPW + j, mask=kw_mask, other=0.0).to(tl.float32)
                part += f * xj[None, :]
                xsum += xj
        if TILE_IN_GROUP:
            g = (kw0 * CPW) // GROUP
            s = tl.load(s_ptr + offs_n * stride_sn + g, mask=n_mask, other=0.0).to(tl.float32)[:, None]
            if HAS_ZEROS:
                z = tl.load(z_ptr + offs_n * stride_zn + g, mask=n_mask, other=0).to(tl.float32)[:, None]
            else:
                z = tl.full((BLOCK_N, 1), 1 << (BITS - 1), tl.float32)
        else:
            gcol = ((offs_kw * CPW) // GROUP)[None, :]
            gmask = n_mask[:, None] & kw_mask[None, :]
            s = tl.load(s_ptr + offs_n[:, None] * stride_sn + gcol, mask=gmask, other=0.0).to(tl.float32)
            if HAS_ZEROS:
                z = tl.load(z_ptr + offs_n[:, None] * stride_zn + gcol, mask=gmask, other=0).to(tl.float32)
            else:
                z = tl.full((BLOCK_N, BLOCK_KW), 1 << (BITS - 1), tl.float32)
        acc += s * (part * (1 << BITS) - (z + (1 << BITS)) * xsum[None, :])
    y = tl.sum(acc, axis=1)
    if HAS_LR:  # CALDERA: y += L[n, :] . t[m, :], t = R x given as T_SPLITS split-K partials
        for r0 in range(0, RANK, BLOCK_R):
            offs_r = r0 + tl.arange(0, BLOCK_R)
            r_mask = offs_r < RANK
            lt = tl.load(l_ptr + offs_n[:, None] * stride_ln + offs_r[None, :],
                         mask=n_mask[:, None] & r_mask[None, :], other=0.0).to(tl.float32)
            tv = tl.zeros((BLOCK_R,), dtype=tl.float32)
            for sp in range(T_SPLITS):
                tv += tl.load(t_ptr + sp * stride_ts + m * stride_tm + offs_r, mask=r_mask, other=0.0)
            y += tl.sum(lt * tv[None, :], axis=1)
    if HAS_BIAS:
        y += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + m * stride_ym + offs_n, y.to(y_ptr.dtype.element_ty), mask=n_mask)


def _gemm_kernel(x_ptr, q_ptr, s_ptr, z_ptr, b_ptr, y_ptr, M, N, K, M_BUCKET,
                 stride_xm, stride_qn, stride_sn, stride_zn, stride_ym,
                 BITS: tl.constexpr, PER: tl.constexpr, GROUP: tl.constexpr, HAS_ZEROS: tl.constexpr,
                 HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, TILE_IN_GROUP: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        a = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                    mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        wmask = k_mask[:, None] & n_mask[None, :]
        byte = tl.load(q_ptr + offs_n[None, :] * stride_qn + (offs_k // PER)[:, None], mask=wmask, other=0)
        q = ((byte.to(tl.int32) >> ((offs_k % PER) * BITS)[:, None]) & ((1 << BITS) - 1)).to(tl.float32)
        if TILE_IN_GROUP:
            g = k0 // GROUP
            s = tl.load(s_ptr + offs_n * stride_sn + g, mask=n_mask, other=0.0).to(tl.float32)[None, :]
            if HAS_ZEROS:
                z = tl.load(z_ptr + offs_n * stride_zn + g, mask=n_mask, other=0).to(tl.float32)[None, :]
            else:
                z = tl.full((1, BLOCK_N), 1 << (BITS - 1), tl.float32)
        else:
            gk = (offs_k // GROUP)[:, None]
            s = tl.load(s_ptr + offs_n[None, :] * stride_sn + gk, mask=wmask, other=0.0).to(tl.float32)
            if HAS_ZEROS:
                z = tl.load(z_ptr + offs_n[None, :] * stride_zn + gk, mask=wmask, other=0).to(tl.float32)
            else:
                z = tl.full((BLOCK_K, BLOCK_N), 1 << (BITS - 1), tl.float32)
        w = ((q - z) * s).to(a.dtype)
        acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=m_mask[:, None] & n_mask[None, :])


def _fits(limits: dict[str, str]):
    """Prune rule: a block dimension no larger than the (power-of-two padded) problem dim."""
    def ok(cfg: dict, args: dict) -> bool:
        return all(cfg[b] <= max(16, _next_pow2(int(args[d]))) for b, d in limits.items())
    return ok


# (kwargs, num_warps, num_stages). BLOCK_KB counts packed bytes.
# GEMV: (BLOCK_N rows, BLOCK_KW int32 words of K per iteration, warps, stages). Small N and
# long K chunks keep many programs and many bytes in flight per SM (a 4096-row GEMV has
# only ~31 rows per H100 SM); short chunks with tall tiles amortise x over more rows.
# X_SPLIT (4-bit only): activations as one contiguous tile split into code columns (fewer
# load instructions, but a shared-memory layout conversion per chunk); the tuner decides.
_GEMV_CONFIGS = [({"BLOCK_N": bn, "BLOCK_KW": bk, "X_SPLIT": xs}, w, s) for bn, bk, xs, w, s in [
    (8, 256, False, 4, 2), (8, 512, False, 4, 2), (16, 128, False, 4, 3), (16, 256, False, 8, 2),
    (32, 128, False, 8, 3), (32, 32, False, 4, 3), (64, 16, False, 2, 3), (64, 32, False, 4, 3),
    (128, 16, False, 4, 3), (16, 16, False, 1, 3), (64, 16, True, 2, 3), (128, 16, True, 4, 3),
    (32, 64, True, 4, 3)]]
_GEMM_CONFIGS = [({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, w, s) for bm, bn, bk, w, s in [
    (16, 64, 64, 4, 4), (16, 128, 64, 4, 4), (32, 64, 64, 4, 4), (32, 128, 64, 4, 3), (64, 64, 64, 4, 3),
    (64, 128, 64, 4, 3), (64, 128, 128, 4, 3), (128, 128, 32, 4, 4), (128, 128, 64, 8, 3),
    (128, 256, 64, 8, 3)]]

GEMV = LazyKernel(
    _gemv_kernel, configs=_GEMV_CONFIGS, key=["N", "KW", "BITS", "GROUP", "HAS_LR"],
    interpret_config={"BLOCK_N": 16, "BLOCK_KW": 8, "X_SPLIT": True},
    heuristics={"TILE_IN_GROUP": lambda a: a["GROUP"] % (a["BLOCK_KW"] * a["CPW"]) == 0},
    prune=lambda c, a: c["BLOCK_N"] <= max(8, _next_pow2(a["N"]))
    and c["BLOCK_KW"] <= max(16, _next_pow2(a["KW"])) and (not c["X_SPLIT"] or a["CPW"] == 8))
GEMM = LazyKernel(
    _gemm_kernel, configs=_GEMM_CONFIGS, key=["M_BUCKET", "N", "K", "BITS", "GROUP"],
    interpret_config={"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32},
    heuristics={"TILE_IN_GROUP": lambda a: a["GROUP"] % a["BLOCK_K"] == 0},
    prune=_fits({"BLOCK_M": "M_BUCKET", "BLOCK_N": "N", "BLOCK_K": "K"}))


def check_device(*tensors: torch.Tensor) -> None:
    """All on one device, and that device can run Triton (CUDA, or CPU under the interpreter)."""
    reason = triton_missing_reason() or mode_mismatch_reason()
    if reason:
        raise KernelUnsupported(reason)
    devs = {t.device for t in tensors if t is not None}
    if len(devs) > 1:
        raise KernelUnsupported(f"kernel inputs are on different devices: {sorted(map(str, devs))}")
    dev = devs.pop()
    if dev.type != "cuda" and not (dev.type == "cpu" and interpreting()):
        raise KernelUnsupported(f"Triton kernels need CUDA tensors (got {dev}); use the torch reference, "
                                f"or set TRITON_INTERPRET=1 to run the interpreter on CPU")


def check_quant_args(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                     bits: int, group: int | None, in_features: int | None = None,
                     bias: torch.Tensor | None = None) -> tuple[int, int, int]:
    """Validate a quantized-matmul call; returns ``(N, K, group)`` or raises KernelUnsupported."""
    if bits not in SUPPORTED_BITS:
        raise KernelUnsupported(f"bits={bits} has no Triton kernel; supported: {SUPPORTED_BITS} "
                                f"(3-bit packing runs on the torch reference)")
    if x.dtype not in ACT_DTYPES:
        raise KernelUnsupported(f"activation dtype {x.dtype} is not supported; use float16, bfloat16 or float32")
    if qweight.dtype != torch.uint8 or qweight.dim() != 2:
        raise KernelUnsupported(f"qweight must be a uint8 [out, packed bytes] matrix, got {qweight.dtype} "
                                f"{tuple(qweight.shape)}")
    k = int(in_features or x.shape[-1])
    per = 8 // bits
    if x.shape[-1] != k:
        raise KernelUnsupported(f"x has {x.shape[-1]} input features, the weight has {k}")
    if k % per:
        raise KernelUnsupported(f"in_features={k} is not a multiple of {per} ({bits}-bit codes per byte)")
    if qweight.shape[1] != k // per:
        raise KernelUnsupported(f"qweight has {qweight.shape[1]} bytes per row; in_features={k} at {bits} bits "
                                f"needs {k // per}")
    if (k // per) % 4:
        raise KernelUnsupported(f"packed rows of {k // per} bytes are not a multiple of 4 (the GEMV reads int32 "
                                f"words); in_features={k} at {bits} bits")
    n = qweight.shape[0]
    g = k if group is None else int(group)
    cpw = 32 // bits
    if g <= 0:
        raise KernelUnsupported(f"group={group} must be a positive integer or None")
    if k % g:
        raise KernelUnsupported(f"group={group} does not divide in_features={k} (a ragged last group of "
                                f"{k % g} inputs): the Triton kernels need whole groups; the torch reference "
                                f"runs it")
    if g % cpw:
        raise KernelUnsupported(f"group={group} must be a multiple of {cpw} ({bits}-bit codes per int32 word)")
    if scales.shape != (n, k // g) or not scales.dtype.is_floating_point:
        raise KernelUnsupported(f"scales must be float [{n}, {k // g}], got {scales.dtype} {tuple(scales.shape)}")
    if zeros is not None and (zeros.shape != scales.shape or zeros.dtype != torch.uint8):
        raise KernelUnsupported(f"zeros must be uint8 {tuple(scales.shape)}, got {zeros.dtype} {tuple(zeros.shape)}")
    if bias is not None and bias.shape != (n,):
        raise KernelUnsupported(f"bias must have shape ({n},), got {tuple(bias.shape)}")
    check_device(x, qweight, scales, zeros, bias)
    return n, k, g


def _launch(x2: torch.Tensor, qweight, scales, zeros, bits, group, n, k, bias,
            lowrank: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """x2 ``[M, K]`` contiguous; lowrank = (L ``[N, r]``, partials of t = R x ``[splits, M, r]``
    fp32, summed in the epilogue) for the GEMV kernel only."""
    m = x2.shape[0]
    y = torch.empty(m, n, device=x2.device, dtype=x2.dtype)
    if m == 0:
        return y
    qweight, scales = qweight.contiguous(), scales.contiguous()
    if qweight.data_ptr() % 16:  # a misaligned slice: copy so the int32 view is legal and vector loads stay 16 B
        qweight = qweight.clone()
    zeros = zeros.contiguous() if zeros is not None else None
    zp = zeros if zeros is not None else scales  # placeholders for unused pointers
    bp = bias.contiguous() if bias is not None else scales
    common = dict(BITS=bits, PER=8 // bits, GROUP=group, HAS_ZEROS=zeros is not None, HAS_BIAS=bias is not None)
    if m <= GEMV_MAX_M or lowrank is not None:
        L, t = lowrank if lowrank is not None else (scales, scales.view(1, *scales.shape))
        rank = L.shape[1] if lowrank is not None else 0
        qwords = qweight.view(torch.int32)  # little-endian: byte j of a row = bits 8j..8j+7 of its word
        gemv_args = {k_: v for k_, v in common.items() if k_ != "PER"}
        GEMV[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), m)](
            x2, qwords, scales, zp, bp, L, t, y, n, qwords.shape[1], rank, t.shape[0], x2.stride(0),
            qwords.stride(0), scales.stride(0), zp.stride(0), L.stride(0), t.stride(0), t.stride(1), y.stride(0),
            HAS_LR=lowrank is not None, BLOCK_R=min(64, max(16, _next_pow2(rank))), CPW=32 // bits, **gemv_args)
    else:
        GEMM[lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]))](
            x2, qweight, scales, zp, bp, y, m, n, k, _next_pow2(m), x2.stride(0), qweight.stride(0),
            scales.stride(0), zp.stride(0), y.stride(0),
            DOT_PRECISION="ieee" if x2.dtype == torch.float32 else "tf32", **common)
    return y


def wq_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
              bits: int, group: int | None, in_features: int | None = None,
              bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ dequant(Q).T (+ bias)`` with the Triton kernels; ``x`` may have leading dims."""
    n, k, g = check_quant_args(x, qweight, scales, zeros, bits, group, in_features, bias)
    x2 = x.reshape(-1, k).contiguous()
    return _launch(x2, qweight, scales, zeros, bits, g, n, k, bias).reshape(*x.shape[:-1], n)


def w4a16_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                 group: int | None, in_features: int | None = None, bias: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """Group-wise int4 weight x 16-bit activation matmul (GEMV for decode, GEMM for prefill)."""
    return wq_matmul(x, qweight, scales, zeros, 4, group, in_features, bias)


__all__ = [
    "ACT_DTYPES",
    "GEMM",
    "GEMV",
    "GEMV_MAX_M",
    "SUPPORTED_BITS",
    "KernelUnsupported",
    "check_device",
    "check_quant_args",
    "w4a16_matmul",
    "wq_matmul",
]
