"""Kernels on a real GPU at real shapes, the CUDA timer and NVML readers (skipped without CUDA)."""
from __future__ import annotations

import pytest
import torch

from harness.kernels import reference
from harness.measure import gpu
from harness.measure.timing import cuda_timer

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _need_cuda():
    reason = gpu.cuda_available_reason()
    if reason:
        pytest.skip(f"needs a CUDA GPU: {reason}")
    pytest.importorskip("triton", reason="triton is not installed")
    from harness.kernels._build import mode_mismatch_reason

    if mode_mismatch_reason():
        pytest.skip(mode_mismatch_reason())


def _packed(n: int, k: int, bits: int, group: int | None, sym: bool):
    from harness.primitives.packing import pack
    from harness.primitives.quant import quantize_groupwise

    w = torch.randn(n, k, device="cuda")
    codes, scales, zeros = quantize_groupwise(w, bits, group, sym)
    return pack(codes, bits), scales, zeros


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


@pytest.mark.parametrize("bits,sym,m,n,k,group,dtype", [
    (4, True, 1, 4096, 4096, 128, torch.float16), (4, False, 1, 8192, 8192, 128, torch.float16),
    (4, False, 16, 4096, 4096, 128, torch.float16), (4, True, 300, 5632, 2048, 128, torch.float16),
    (8, True, 1, 4096, 4096, 128, torch.float16), (8, False, 64, 2048, 5632, 64, torch.bfloat16),
    (2, False, 1, 4096, 4096, 128, torch.float16), (4, False, 2, 1000, 4096, 32, torch.bfloat16)])
def test_quant_matmul_real_shapes(bits, sym, m, n, k, group, dtype):
    from harness.kernels.w4a16 import wq_matmul

    qw, s, z = _packed(n, k, bits, group, sym)
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    y = wq_matmul(x, qw, s, z, bits, group)
    tol = 2e-3 if dtype == torch.float16 else 1.6e-2  # bf16 has 8 mantissa bits
    assert _rel(y, reference.quant_matmul_ref(x, qw, s, z, bits, group)) < tol


@pytest.mark.parametrize("bits,m", [(2, 1), (4, 1), (2, 32)])
def test_qlr_real_shapes(bits, m):
    from harness.kernels.qlr import qlr_matmul

    n = k = 4096
    qw, s, z = _packed(n, k, bits, 128, False)
    L = (torch.randn(n, 64, device="cuda") * 0.1).half()
    R = (torch.randn(64, k, device="cuda") * 0.1).half()
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    y = qlr_matmul(x, qw, s, z, bits, 128, L, R)
    assert _rel(y, reference.qlr_matmul_ref(x, qw, s, z, bits, 128, L, R)) < 2e-3


def test_quant_linear_runs_the_kernel_on_cuda(monkeypatch):
    import harness.kernels.w4a16 as w4
    from harness.layers.quant import QuantLinear

    calls = []
    real = w4.wq_matmul
    monkeypatch.setattr(w4, "wq_matmul", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    layer = QuantLinear.from_weight(torch.randn(512, 1024, device="cuda"), bits=4, group=128, sym=False)
    x = torch.randn(2, 3, 1024, device="cuda", dtype=torch.float16)
    y = layer(x)
    assert calls, "QuantLinear.forward did not reach the Triton kernel on CUDA"
    ref = (x.float() @ layer.dequantize(torch.float32).T).half()
    assert y.shape == (2, 3, 512) and _rel(y, ref) < 2e-3


def test_cuda_timer_measures_device_time():
    with cuda_timer() as t:
        torch.cuda._sleep(50_000_000)  # ~25-50 ms of GPU cycles, returns at once on the host
    assert t.ms is not None and t.ms > 5


def test_cuda_timer_blocks_can_be_queued_and_read_later():
    timings = []
    for _ in range(3):
        with cuda_timer(sync_before=False, wait=False) as t:
            torch.cuda._sleep(5_000_000)
        timings.append(t)
    torch.cuda.synchronize()
    assert all(t.ms is not None and t.ms > 0.5 for t in timings)


def test_device_info_and_peak_bandwidth():
    info, reason = gpu.device_info()
    assert reason is None and info["gpu_torch_name"]
    bw, how = gpu.peak_memory_bandwidth()
    assert bw is not None and 1e11 < bw < 2e13, how


def test_bench_rows_are_consistent():
    from harness.measure import kernel_bench

    rows, _ = kernel_bench.run(["fp16", "w4a16"], [(2048, 2048)], [1], warmup=3, reps=10, compare_do_bench=False)
    w4 = next(r for r in rows if r["kernel"] == "w4a16")
    assert w4["max_rel_err"] < 2e-3
    assert w4["gbps"] == pytest.approx(w4["bytes"] / (w4["median_us"] * 1e-6) / 1e9)
    assert w4["p10_us"] <= w4["median_us"] <= w4["p90_us"] and w4["speedup_vs_fp16"] > 0
