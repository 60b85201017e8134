"""Dispatch, validation and the torch references, in-process on CPU (no interpreter needed)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from harness.kernels import dispatch, reference
from harness.kernels.qlr import check_lowrank
from harness.kernels.w4a16 import KernelUnsupported, check_quant_args
from harness.layers.exec import reference_forward
from harness.layers.quant import QuantLinear
from harness.primitives.packing import pack


def _layer(bits=4, group=32, sym=False, n=24, k=64):
    torch.manual_seed(0)
    return QuantLinear.from_weight(torch.randn(n, k), bits=bits, group=group, sym=sym)


def test_reference_reads_the_agreed_nibble_order():
    # 4-bit: element 2j in the LOW nibble of byte j; symmetric zero 8, scale 1.
    qw = torch.tensor([[0x21, 0xF0]], dtype=torch.uint8)
    w = reference.dequantize(qw, torch.ones(1, 1, dtype=torch.float16), None, 4, None, 4)
    assert w.tolist() == [[1 - 8, 2 - 8, 0 - 8, 15 - 8]]
    # 2-bit: element 4j+k at bits 2k..2k+1; asymmetric zero code 1, scale 0.5.
    qw2 = torch.tensor([[0b11100100]], dtype=torch.uint8)
    w2 = reference.dequantize(qw2, torch.full((1, 1), 0.5, dtype=torch.float16), torch.ones(1, 1, dtype=torch.uint8),
                              2, None, 4)
    assert w2.tolist() == [[-0.5, 0.0, 0.5, 1.0]]


def test_reference_matches_quant_linear_forward():
    layer = _layer()
    x = torch.randn(3, 64)
    ref = reference.quant_matmul_ref(x, layer.qweight, layer.scales, layer.zeros, 4, 32, 64)
    with reference_forward():  # the layer's torch path, not its CPU kernel
        assert torch.allclose(ref, layer(x), atol=1e-5)


def test_qlr_reference_adds_the_low_rank_term():
    layer = _layer()
    L, R = torch.randn(24, 5), torch.randn(5, 64)
    x = torch.randn(2, 64)
    y = reference.qlr_matmul_ref(x, layer.qweight, layer.scales, layer.zeros, 4, 32, L, R)
    with reference_forward():  # the layer's torch path, not its CPU kernel
        assert torch.allclose(y, layer(x) + x @ (L @ R).T, atol=1e-4)


def test_cpu_without_interpreter_falls_back_to_torch(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    layer = _layer()
    x = torch.randn(2, 64)
    args = (x, layer.qweight, layer.scales, layer.zeros, 4, 32)
    reason = dispatch.why_not(*args)
    assert reason and ("CUDA" in reason or "triton" in reason or "TRITON_INTERPRET" in reason)
    assert dispatch.maybe_triton_linear(*args) is None
    assert torch.equal(dispatch.quant_matmul(*args, 64), reference.quant_matmul_ref(*args, 64))
    L, R = torch.randn(24, 4), torch.randn(4, 64)
    assert dispatch.maybe_triton_qlr(*args, L, R) is None
    assert torch.equal(dispatch.qlr_matmul(*args, L, R), reference.qlr_matmul_ref(*args, L, R))


@pytest.mark.parametrize("mutate,needle", [
    (lambda a: {**a, "bits": 3}, "bits=3"),
    (lambda a: {**a, "x": a["x"].double()}, "float64"),
    (lambda a: {**a, "x": a["x"][:, :62]}, "qweight has 32 bytes per row; in_features=62"),
    (lambda a: {**a, "group": 24}, "group=24"),
    (lambda a: {**a, "group": 4, "scales": a["scales"].repeat_interleave(8, 1)},
     "multiple of 8 (4-bit codes per int32"),
    (lambda a: {**a, "scales": a["scales"][:, :1]}, "scales must be"),
    (lambda a: {**a, "zeros": a["zeros"].float()}, "zeros must be uint8"),
    (lambda a: {**a, "qweight": a["qweight"][:, :10]}, "qweight has 10 bytes per row"),
    (lambda a: {**a, "qweight": a["qweight"].float()}, "qweight must be a uint8"),
    (lambda a: {**a, "bias": torch.zeros(5)}, "bias must have shape"),
])
def test_unsupported_inputs_name_the_value(mutate, needle):
    layer = _layer()
    a = mutate({"x": torch.randn(1, 64), "qweight": layer.qweight, "scales": layer.scales, "zeros": layer.zeros,
                "bits": 4, "group": 32, "bias": None})
    with pytest.raises(KernelUnsupported) as e:
        check_quant_args(a["x"], a["qweight"], a["scales"], a["zeros"], a["bits"], a["group"], None, a["bias"])
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, ValueError)
    assert dispatch.maybe_triton_linear(a["x"], a["qweight"], a["scales"], a["zeros"], a["bits"], a["group"],
                                        a["bias"]) is None


def test_gemv_needs_whole_int32_words_per_row():
    codes = torch.randint(0, 16, (4, 20), dtype=torch.uint8)
    with pytest.raises(KernelUnsupported, match="packed rows of 10 bytes are not a multiple of 4"):
        check_quant_args(torch.randn(1, 20), pack(codes, 4), torch.ones(4, 1, dtype=torch.float16), None, 4, None)


def test_odd_in_features_cannot_pack_two_per_byte():
    codes = torch.randint(0, 16, (4, 7), dtype=torch.uint8)
    qw = pack(codes, 4)
    with pytest.raises(KernelUnsupported, match="in_features=7 is not a multiple of 2"):
        check_quant_args(torch.randn(1, 7), qw, torch.ones(4, 1, dtype=torch.float16), None, 4, None)


def test_low_rank_factor_shapes_are_checked():
    with pytest.raises(KernelUnsupported, match=r"L \[24, r\] and R \[r, 64\]"):
        check_lowrank(torch.randn(24, 4), torch.randn(5, 64), 24, 64)
    with pytest.raises(KernelUnsupported, match="float64"):
        check_lowrank(torch.randn(24, 4).double(), torch.randn(4, 64), 24, 64)


def test_import_does_not_need_triton():
    code = ("import sys; sys.modules['triton'] = None\n"
            "import torch\n"
            "from harness.kernels import quant_matmul, why_not\n"
            "from harness.kernels.reference import quant_matmul_ref\n"
            "qw = torch.randint(0, 256, (8, 16), dtype=torch.uint8); s = torch.rand(8, 1).half()\n"
            "x = torch.randn(2, 32)\n"
            "r = why_not(x, qw, s, None, 4, None)\n"
            "assert r and 'triton is not importable' in r, r\n"
            "assert torch.equal(quant_matmul(x, qw, s, None, 4, None, 32), quant_matmul_ref(x, qw, s, None, 4, None))\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-1500:]


def test_autotune_pruning_keeps_blocks_that_fit_the_shape():
    triton = pytest.importorskip("triton")
    from harness.kernels.w4a16 import GEMM, GEMV

    def kept(kernel, args):
        cfgs = [triton.Config(kw, num_warps=w, num_stages=s) for kw, w, s in kernel.configs]
        return kernel._prune(cfgs, args)

    gemv = kept(GEMV, {"N": 40, "KW": 8, "CPW": 8})
    assert gemv and all(c.kwargs["BLOCK_N"] <= 64 and c.kwargs["BLOCK_KW"] <= 16 for c in gemv)
    assert len(kept(GEMV, {"N": 8192, "KW": 1024, "CPW": 8})) == len(GEMV.configs)
    w8 = kept(GEMV, {"N": 8192, "KW": 2048, "CPW": 4})  # the split-activation variant is 4-bit only
    assert w8 and not any(c.kwargs["X_SPLIT"] for c in w8)
    gemm = kept(GEMM, {"M_BUCKET": 1, "N": 4096, "K": 4096})
    assert gemm and {c.kwargs["BLOCK_M"] for c in gemm} == {16}
    assert len(kept(GEMM, {"M_BUCKET": 1, "N": 1, "K": 1})) >= 1  # never prunes to nothing
