"""Kernel-vs-reference cases run under Triton's CPU interpreter in a subprocess.

Triton fixes interpreter vs compiled mode when it is first imported, and a normal test
process may already have imported it (transformers does), so the cases run in a fresh
interpreter with ``TRITON_INTERPRET=1`` set before any import:
``python kernel_interp_cases.py`` prints one JSON object ``{case_id: result}``. The
module imports neither triton nor harness at top level, so the tests can parametrize
over ``CASES`` cheaply.

Each result has ``err`` (max |kernel - reference| / max |reference|), ``tol`` and, for
negative controls, ``expect_fail``; or ``error`` with the exception text.
"""
from __future__ import annotations

import json
import os
import sys
import traceback

CASES: dict[str, dict] = {}


def _case(cid: str, **kw) -> None:
    CASES[cid] = kw


# The packed-format matmul at every supported width, both scale paths (one group per
# chunk / gathered per byte), symmetric and asymmetric, GEMV (M=1) and GEMM (M=5).
for _bits in (2, 4, 8):
    for _sym in (True, False):
        for _m in (1, 5):
            _case(f"wq-b{_bits}-{'sym' if _sym else 'asym'}-tile-m{_m}", op="wq", bits=_bits, sym=_sym, m=_m,
                  n=40, k=256, group=128)
    for _m in (1, 5):
        _case(f"wq-b{_bits}-asym-gather-m{_m}", op="wq", bits=_bits, sym=False, m=_m, n=40, k=128,
              group={2: 16, 4: 8, 8: 4}[_bits])
_case("wq-b4-perchannel-m1", op="wq", bits=4, sym=True, m=1, n=24, k=96, group=None)
_case("wq-b4-perchannel-m5", op="wq", bits=4, sym=False, m=5, n=24, k=96, group=None)
_case("wq-b4-ragged-m1", op="wq", bits=4, sym=False, m=1, n=37, k=104, group=8)
_case("wq-b4-ragged-m3", op="wq", bits=4, sym=False, m=3, n=37, k=104, group=8)
_case("wq-b4-bias-3d-gemv", op="wq", bits=4, sym=True, m=(1, 1), n=40, k=64, group=32, bias=True)
_case("wq-b8-bias-3d-gemm", op="wq", bits=8, sym=False, m=(2, 3), n=40, k=64, group=32, bias=True)
_case("wq-b4-fp32-m1", op="wq", bits=4, sym=False, m=1, n=40, k=64, group=32, dtype="float32")
_case("wq-b4-fp32-m5", op="wq", bits=4, sym=False, m=5, n=40, k=64, group=32, dtype="float32")
_case("w4a16-entry", op="w4a16", bits=4, sym=True, m=1, n=16, k=64, group=32)
_case("w8a16-entry", op="w8a16", bits=8, sym=False, m=4, n=16, k=64, group=32)
# The same 4-bit GEMV with strided activation loads (X_SPLIT=False; the default interpreter
# config takes the split path at 4 bits).
_case("wq-b4-asym-tile-m1-strided-x", op="wq", bits=4, sym=False, m=1, n=40, k=256, group=128, x_split=False)
_case("wq-b4-asym-gather-m2-strided-x", op="wq", bits=4, sym=False, m=2, n=37, k=104, group=8, x_split=False)
# CALDERA Q + L R: fused GEMV (M <= 2, split-K partials of R x) and GEMM + torch (M = 5).
for _bits in (2, 4):
    for _m in (1, 2, 5):
        _case(f"qlr-b{_bits}-m{_m}", op="qlr", bits=_bits, sym=False, m=_m, n=40, k=128, group=32, rank=24)
_case("qlr-b4-bias-rank40", op="qlr", bits=4, sym=True, m=1, n=24, k=128, group=64, rank=40, bias=True)
# What QuantLinear stores is what the kernel reads (the layer's own dequantize + linear).
_case("layer-b4-asym", op="layer", bits=4, sym=False, m=3, n=48, k=128, group=32)
_case("layer-b8-sym", op="layer", bits=8, sym=True, m=1, n=48, k=128, group=64)
_case("layer-b4-perchannel", op="layer", bits=4, sym=True, m=1, n=48, k=128, group=None)
# Negative control: nibbles swapped -> the comparison must catch it.
_case("control-swapped-nibbles", op="swapped", bits=4, sym=False, m=1, n=40, k=128, group=32, expect_fail=True)


def _tol(case: dict) -> float:
    """Relative to max |ref|: fp32 accumulation (GEMV) vs fp16-rounded weight tiles (GEMM)."""
    return 1e-5 if case.get("dtype") == "float32" else 2e-3


def run_case(cid: str) -> dict:
    import zlib

    import torch

    from harness.kernels import dispatch, reference
    from harness.kernels.qlr import qlr_matmul
    from harness.kernels.w4a16 import w4a16_matmul, wq_matmul
    from harness.kernels.w8a16 import w8a16_matmul
    from harness.layers.exec import reference_forward
    from harness.layers.quant import QuantLinear
    from harness.primitives.packing import pack
    from harness.primitives.quant import quantize_groupwise

    case = CASES[cid]
    torch.manual_seed(zlib.crc32(cid.encode()))
    from harness.kernels.w4a16 import GEMV

    want = {**GEMV.interpret_config, "X_SPLIT": case.get("x_split", True)}
    if GEMV.interpret_config != want:
        GEMV.interpret_config = want
        GEMV._built.clear()
    bits, group, n, k = case["bits"], case["group"], case["n"], case["k"]
    dtype = getattr(torch, case.get("dtype", "float16"))
    lead = case["m"] if isinstance(case["m"], tuple) else (case["m"],)
    x = torch.randn(*lead, k).to(dtype)
    w = torch.randn(n, k)
    bias = torch.randn(n) if case.get("bias") else None
    codes, scales, zeros = quantize_groupwise(w, bits, group, case["sym"])
    qw = pack(codes, bits)
    op = case["op"]
    if op in ("wq", "swapped"):
        ref = reference.quant_matmul_ref(x, qw, scales, zeros, bits, group, k, bias)
        if op == "swapped":
            qw = ((qw >> 4) | (qw << 4)).to(torch.uint8)
        out = wq_matmul(x, qw, scales, zeros, bits, group, k, bias)
    elif op == "w4a16":
        ref, out = reference.quant_matmul_ref(x, qw, scales, zeros, 4, group), w4a16_matmul(x, qw, scales, zeros, group)
    elif op == "w8a16":
        ref, out = reference.quant_matmul_ref(x, qw, scales, zeros, 8, group), w8a16_matmul(x, qw, scales, zeros, group)
    elif op == "qlr":
        import harness.kernels.qlr as qlr_mod

        qlr_mod.RX_SPLIT_K = 32  # several split-K partials of R x even at K = 128
        L = (torch.randn(n, case["rank"]) * 0.3).to(dtype)
        R = (torch.randn(case["rank"], k) * 0.3).to(dtype)
        ref = reference.qlr_matmul_ref(x, qw, scales, zeros, bits, group, L, R, k, bias)
        out = qlr_matmul(x, qw, scales, zeros, bits, group, L, R, k, bias)
    elif op == "layer":
        layer = QuantLinear.from_weight(w, bits=bits, group=group, sym=case["sym"])
        with reference_forward():  # the layer's torch path (not the CPU int4pack/int8pack kernels)
            ref = layer(x.float()).to(dtype)
        out = dispatch.quant_matmul(x, layer.qweight, layer.scales, layer.zeros, bits, group, k)
        if dispatch.why_not(x, layer.qweight, layer.scales, layer.zeros, bits, group) is not None:
            return {"error": "dispatch did not take the Triton path: "
                             + str(dispatch.why_not(x, layer.qweight, layer.scales, layer.zeros, bits, group))}
    else:
        raise ValueError(f"unknown op {op}")
    if out.shape != ref.shape or out.dtype != ref.dtype:
        return {"error": f"shape/dtype {tuple(out.shape)} {out.dtype} != reference {tuple(ref.shape)} {ref.dtype}"}
    err = float((out.float() - ref.float()).abs().max() / ref.float().abs().max())
    return {"err": err, "tol": _tol(case), "expect_fail": bool(case.get("expect_fail"))}


def main(ids: list[str]) -> int:
    os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch

    torch.set_num_threads(1)
    results = {}
    for cid in ids or list(CASES):
        try:
            results[cid] = run_case(cid)
        except Exception as e:  # reported per case by the tests
            results[cid] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc(limit=4)}
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
