"""Kernel benchmark tooling (``harness.measure.kernel_bench``) and GPU helpers
(``harness.measure.gpu``, ``timing.cuda_timer``) that must behave on a CPU-only machine too."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from harness.config import SpecError
from harness.measure import gpu
from harness.measure import kernel_bench as bench
from harness.measure.timing import cuda_timer

NO_CUDA = gpu.cuda_available_reason() is not None
needs_no_cuda = pytest.mark.skipif(not NO_CUDA, reason="checks the no-GPU behaviour; this machine has CUDA")


def test_bandwidth_from_clock_reproduces_datasheets():
    assert gpu.bandwidth_from_clock(2619, 5120) == pytest.approx(3.35e12, rel=0.01)  # H100 SXM, HBM3
    assert gpu.bandwidth_from_clock(1215, 5120) == pytest.approx(1.555e12, rel=0.01)  # A100 40GB
    assert gpu.bandwidth_from_clock(10501, 384) == pytest.approx(1.008e12, rel=0.01)  # RTX 4090, GDDR6X


@pytest.mark.parametrize("name,want", [("NVIDIA H100 80GB HBM3", 3.35e12), ("NVIDIA H100 PCIe", 2.0e12),
                                       ("NVIDIA H100 NVL", 3.9e12), ("NVIDIA H200", 4.8e12),
                                       ("NVIDIA A100-SXM4-80GB", 2.039e12), ("NVIDIA A100-SXM4-40GB", 1.555e12)])
def test_bandwidth_table_most_specific_entry_wins(name, want):
    bw, how = gpu.bandwidth_from_table(name)
    assert bw == want and name in how


def test_unknown_gpu_has_no_invented_peak():
    bw, how = gpu.bandwidth_from_table("Imaginary GPU 9000")
    assert bw is None and "not in PEAK_BANDWIDTH_TABLE" in how


def test_non_cuda_device_is_named():
    assert "not a CUDA device" in gpu.cuda_available_reason("cpu")


@needs_no_cuda
def test_cuda_requested_without_gpu_is_a_clear_error():
    reason = gpu.cuda_available_reason()
    assert "is_available() is False" in reason
    with pytest.raises(gpu.GPUUnavailable, match="CUDA requested but unavailable"):
        gpu.require_cuda()
    with pytest.raises(gpu.GPUUnavailable), cuda_timer():
        pass
    with pytest.raises(gpu.GPUUnavailable):
        gpu.l2_flush_buffer()
    info, why = gpu.device_info()
    if info is None:
        assert "is_available() is False" in why
    bw, how = gpu.peak_memory_bandwidth()
    assert bw is None and how


def test_nvml_readers_return_value_or_reason():
    for fn in (gpu.memory_used_mb, gpu.energy_mj, gpu.clocks):
        value, reason = fn()
        assert (value is None) != (reason is None)
        if value is None:
            assert isinstance(reason, str) and reason


def test_shape_and_kernel_parsing():
    assert bench.parse_shapes("4096x4096, 8192X1024") == [(4096, 4096), (8192, 1024)]
    for bad in ("4096", "0x5", "axb", ""):
        with pytest.raises(SpecError):
            bench.parse_shapes(bad)
    with pytest.raises(SpecError, match="unknown kernel 'w3a16'; choose from fp16, w4a16, w8a16, qlr"):
        bench.parse_kernels("w4a16,w3a16")


def test_bytes_moved_count_packed_weights_metadata_and_io():
    c = bench.make_case("w4a16", 1, 256, 512, group=128, device="cpu")
    assert c.bytes == 256 * 256 + 256 * 4 * 2 + (512 + 256) * 2 and c.flops == 2 * 256 * 512
    f = bench.make_case("fp16", 1, 256, 512, device="cpu")
    assert f.bytes == 256 * 512 * 2 + (512 + 256) * 2
    q = bench.make_case("qlr", 1, 256, 512, group=128, rank=16, qlr_bits=2, device="cpu")
    assert q.bytes == 256 * 128 + 256 * 4 * 2 + (256 * 16 + 16 * 512) * 2 + (512 + 256) * 2
    assert torch.allclose(f.fn().float(), bench.make_case("fp16", 1, 256, 512, device="cpu").fn().float())


def _row(kernel, med, pct=None, agree=None, m=1):
    return {"kernel": kernel, "M": m, "N": 4096, "K": 4096, "bits": 4, "median_us": med, "p10_us": med,
            "p90_us": med, "gbps": 1.0, "tflops": 0.1, "pct_peak": pct, "do_bench_agree_pct": agree}


def test_speedups_and_target_verdicts():
    rows = [_row("fp16", 30.0), _row("w4a16", 10.0, pct=65.0, agree=1.0), _row("w4a16", 40.0, m=16)]
    bench.add_speedups(rows)
    assert rows[1]["speedup_vs_fp16"] == pytest.approx(3.0) and rows[0]["speedup_vs_fp16"] is None
    assert rows[2]["speedup_vs_fp16"] is None  # no fp16 row at M=16: no invented baseline
    v = bench.target_verdicts(rows)
    assert len(v) == 3  # only the M=1 W4A16 row is judged
    assert any("pct_peak" in s and "MISSES" in s for s in v)
    assert any("speedup_vs_fp16" in s and s.endswith("meets") for s in v)
    assert any("do_bench_agree_pct" in s and s.endswith("meets") for s in v)
    table = bench.format_table(rows)
    assert table.count("\n") == 4 and "| w4a16 | 1 | 4096x4096 |" in table and "N/A" in table


@needs_no_cuda
def test_cli_entry_without_gpu_exits_2_with_reason(capsys):
    assert bench.main(["--shapes", "64x64"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CUDA requested but unavailable" in err


def test_harness_kernels_bench_help(capsys):
    from harness.cli import main

    with pytest.raises(SystemExit) as e:
        main(["kernels", "bench", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: harness kernels bench" in out and "--static SM" in out and "--no-do-bench" in out


def test_cli_entry_rejects_bad_input(capsys):
    assert bench.main(["--kernels", "nope"]) == 2
    assert "unknown kernel 'nope'" in capsys.readouterr().err


def _bench_script():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_kernels.py"
    if str(path.parent) not in sys.path:  # the script imports its sibling benchmarks/_common.py, as when run
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location("bench_kernels_script", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@needs_no_cuda
def test_benchmark_script_refuses_cpu_and_leaves_docs_alone(tmp_path, capsys):
    out = tmp_path / "gpu-results.md"
    assert _bench_script().main(["--out", str(out)]) == 2
    assert not out.exists() and "needs a CUDA GPU" in capsys.readouterr().err


def test_benchmark_report_renders_measured_rows():
    from harness.records import Record

    mod = _bench_script()
    rows = [_row("fp16", 30.0), _row("w4a16", 10.0, pct=72.0, agree=2.0)]
    bench.add_speedups(rows)
    e2e = [("fp16", [Record("latency.decode_tok_s", 100.0), Record("size.bytes", 2**20 * 10)]),
           ("rtn w4 g128, Triton kernels", [Record("latency.decode_tok_s", 150.0),
                                            Record.na("energy.j_per_token", "counter did not advance")])]
    text = mod.render(rows, {"gpu": "NVIDIA H100 80GB HBM3", "peak_bw_gbps": 3352.0, "peak_bw_source": "NVML"}, e2e)
    assert "**NVIDIA H100 80GB HBM3**" in text and "3352 GB/s" in text
    assert "| rtn w4 g128, Triton kernels | N/A | - | 150 | 1.50 |" in text
    assert "N/A (counter did not advance)" in text
    assert "pct_peak = 72.00 (target >= 70.0): meets" in text
