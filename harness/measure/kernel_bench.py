"""Kernel micro-benchmark (``harness kernels bench``): CUDA events, L2 flush, spread, GB/s.

Per repetition: zero a 256 MiB buffer (evicts L2, so weights come from HBM as they do
in a real decode step), record a start event, launch, record an end event; events are
read after one final synchronize. Warm-up calls run first (they also trigger Triton's
autotuning). Reported: median, p10, p90 over ``reps``; achieved GB/s from the bytes the
kernel must move (packed weights + scales + zeros + low-rank factors + x + y) and its %
of the device's peak (``gpu.peak_memory_bandwidth``); TFLOP/s (2 M N K); the speed-up
against fp16 ``torch.matmul`` on the same shape; ``triton.testing.do_bench`` (median, its
own L2 flush) on the same callable as a cross-check of the event timing; and the max
error against the torch reference on that real shape.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from harness.config import SpecError
from harness.measure import gpu
from harness.measure.timing import Samples, cuda_timer

KERNELS = ("fp16", "w4a16", "w8a16", "qlr")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
TARGETS = {"pct_peak": 70.0, "speedup_vs_fp16": 2.5, "do_bench_agree_pct": 5.0}


@dataclass
class Case:
    """One benchmarked call: ``fn`` plus what it must move and compute."""

    kernel: str
    m: int
    n: int
    k: int
    bits: int
    group: int
    rank: int
    fn: Callable[[], torch.Tensor]
    ref: Callable[[], torch.Tensor] | None
    bytes: int
    flops: int


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """``"4096x4096,8192x8192"`` (out x in) -> [(N, K), ...]."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            n, k = (int(v) for v in part.lower().split("x"))
        except ValueError:
            raise SpecError(f"shape {part!r} is not OUTxIN, e.g. 4096x4096") from None
        if n <= 0 or k <= 0:
            raise SpecError(f"shape {part!r} must have positive dims")
        out.append((n, k))
    if not out:
        raise SpecError("no shapes given; e.g. --shapes 4096x4096,8192x8192")
    return out


def parse_kernels(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    for n in names:
        if n not in KERNELS:
            raise SpecError(f"unknown kernel {n!r}; choose from {', '.join(KERNELS)}")
    return names


def make_case(kernel: str, m: int, n: int, k: int, *, group: int = 128, rank: int = 64, qlr_bits: int = 2,
              dtype: torch.dtype = torch.float16, device: torch.device | str = "cuda", seed: int = 0) -> Case:
    """Random packed buffers of the real shape (any byte is a valid code pair) and the call."""
    from harness.kernels import reference
    from harness.kernels.qlr import qlr_matmul
    from harness.kernels.w4a16 import wq_matmul

    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(m, k, generator=g, device=device, dtype=dtype)
    io = (m * k + m * n) * x.element_size()
    flops = 2 * m * n * k
    if kernel == "fp16":
        w = torch.randn(n, k, generator=g, device=device, dtype=dtype) / k ** 0.5
        wt = w.t()
        return Case(kernel, m, n, k, 16, 0, 0, lambda: torch.matmul(x, wt), None, n * k * w.element_size() + io,
                    flops)
    bits = {"w4a16": 4, "w8a16": 8, "qlr": qlr_bits}[kernel]
    if k % group:
        raise SpecError(f"group={group} does not divide in={k}")
    qw = torch.randint(0, 256, (n, k * bits // 8), generator=g, device=device, dtype=torch.uint8)
    scales = (torch.rand(n, k // group, generator=g, device=device) * 0.02 + 0.001).to(torch.float16)
    zeros = None
    meta = scales.numel() * 2
    if kernel == "qlr":
        L = (torch.randn(n, rank, generator=g, device=device) * 0.05).to(dtype)
        R = (torch.randn(rank, k, generator=g, device=device) * 0.05).to(dtype)
        return Case(kernel, m, n, k, bits, group, rank,
                    lambda: qlr_matmul(x, qw, scales, zeros, bits, group, L, R),
                    lambda: reference.qlr_matmul_ref(x, qw, scales, zeros, bits, group, L, R),
                    qw.numel() + meta + (L.numel() + R.numel()) * L.element_size() + io,
                    flops + 2 * m * rank * (n + k))
    return Case(kernel, m, n, k, bits, group, 0, lambda: wq_matmul(x, qw, scales, zeros, bits, group),
                lambda: reference.quant_matmul_ref(x, qw, scales, zeros, bits, group), qw.numel() + meta + io, flops)


def time_events(fn: Callable[[], Any], *, warmup: int = 25, reps: int = 100, flush: torch.Tensor | None = None
                ) -> Samples:
    """Per-repetition CUDA-event times (ms) on the current device, L2 flushed before each when
    ``flush`` is given; the repetitions are queued back to back and read after one synchronize."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    dev = torch.cuda.current_device()
    timings = []
    for _ in range(reps):
        if flush is not None:
            flush.zero_()
        with cuda_timer(dev, sync_before=False, wait=False) as t:
            fn()
        timings.append(t)
    torch.cuda.synchronize()
    return Samples([t.ms for t in timings], timer="cuda-events")


def bench_case(case: Case, *, warmup: int, reps: int, flush: torch.Tensor, peak_bw: float | None,
               compare_do_bench: bool = True) -> dict[str, Any]:
    """One table row for ``case`` (times in microseconds)."""
    s = time_events(case.fn, warmup=warmup, reps=reps, flush=flush)
    med = s.median * 1e-3
    row: dict[str, Any] = {
        "kernel": case.kernel, "M": case.m, "N": case.n, "K": case.k, "bits": case.bits,
        "group": case.group or None, "rank": case.rank or None, "n": s.n,
        "median_us": s.median * 1e3, "p10_us": s.quantile(0.1) * 1e3, "p90_us": s.quantile(0.9) * 1e3,
        "bytes": case.bytes, "gbps": case.bytes / med / 1e9, "tflops": case.flops / med / 1e12,
        "pct_peak": 100 * case.bytes / med / peak_bw if peak_bw else None,
    }
    if compare_do_bench:
        import triton.testing

        db = float(triton.testing.do_bench(case.fn, return_mode="median"))  # 25 ms warm-up, 100 ms of reps
        row["do_bench_us"] = db * 1e3
        row["do_bench_agree_pct"] = 100 * abs(s.median - db) / db
    if case.ref is not None:
        y, r = case.fn().float(), case.ref().float()
        row["max_rel_err"] = float((y - r).abs().max() / r.abs().max().clamp_min(1e-12))
    if case.kernel != "fp16":
        from harness.kernels.qlr import RX
        from harness.kernels.w4a16 import GEMM, GEMV, GEMV_MAX_M

        k = GEMV if case.m <= GEMV_MAX_M or case.kernel == "qlr" else GEMM
        cfg = k.best_config()
        row["config"] = str(cfg) if cfg is not None else None
        if case.kernel == "qlr":
            row["rx_config"] = str(RX.best_config())
    return row


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """``speedup_vs_fp16`` = fp16 median / kernel median on the same (M, N, K)."""
    fp16 = {(r["M"], r["N"], r["K"]): r["median_us"] for r in rows if r["kernel"] == "fp16"}
    for r in rows:
        base = fp16.get((r["M"], r["N"], r["K"]))
        r["speedup_vs_fp16"] = base / r["median_us"] if base and r["kernel"] != "fp16" else None


def run(kernels: Sequence[str] = KERNELS, shapes: Sequence[tuple[int, int]] = ((4096, 4096), (8192, 8192)),
        ms: Sequence[int] = (1,), *, group: int = 128, rank: int = 64, qlr_bits: int = 2, dtype: str = "float16",
        warmup: int = 25, reps: int = 100, device: str = "cuda", compare_do_bench: bool = True
        ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Benchmark every (kernel, M, shape); returns (rows, device info). GPUUnavailable without CUDA."""
    dev = gpu.require_cuda(device)
    if dtype not in DTYPES:
        raise SpecError(f"dtype {dtype!r} is not supported; choose from {', '.join(DTYPES)}")
    torch.cuda.set_device(dev)
    info, _ = gpu.device_info(dev)
    peak, how = gpu.peak_memory_bandwidth(dev)
    info = {**(info or {}), "peak_bw_gbps": peak / 1e9 if peak else None, "peak_bw_source": how}
    flush = gpu.l2_flush_buffer(dev)
    rows = []
    for m in ms:
        for n, k in shapes:
            for name in kernels:
                case = make_case(name, m, n, k, group=group, rank=rank, qlr_bits=qlr_bits, dtype=DTYPES[dtype],
                                 device=dev)
                rows.append(bench_case(case, warmup=warmup, reps=reps, flush=flush, peak_bw=peak,
                                       compare_do_bench=compare_do_bench))
                del case
    add_speedups(rows)
    return rows, info


def _fmt(v: Any, spec: str = ".1f") -> str:
    return "N/A" if v is None else (format(v, spec) if isinstance(v, float) else str(v))


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the rows (one line per kernel x shape)."""
    head = ["kernel", "M", "N x K", "bits", "median us", "p10-p90 us", "GB/s", "% peak", "TFLOP/s",
            "x fp16", "do_bench us", "agree %", "max rel err"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["kernel"], str(r["M"]), f"{r['N']}x{r['K']}", str(r["bits"]), _fmt(r["median_us"], ".2f"),
            f"{_fmt(r['p10_us'], '.2f')}-{_fmt(r['p90_us'], '.2f')}", _fmt(r["gbps"], ".0f"),
            _fmt(r.get("pct_peak")), _fmt(r["tflops"], ".2f"), _fmt(r.get("speedup_vs_fp16"), ".2f"),
            _fmt(r.get("do_bench_us"), ".2f"), _fmt(r.get("do_bench_agree_pct")),
            _fmt(r.get("max_rel_err"), ".1e")]) + " |")
    return "\n".join(lines)


def target_verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets checked against W4A16 M=1 rows, one line each (meets/MISSES)."""
    out = []
    for r in rows:
        if r["kernel"] != "w4a16" or r["M"] != 1:
            continue
        shape = f"{r['N']}x{r['K']}"
        for key, want, le in (("pct_peak", TARGETS["pct_peak"], False),
                              ("speedup_vs_fp16", TARGETS["speedup_vs_fp16"], False),
                              ("do_bench_agree_pct", TARGETS["do_bench_agree_pct"], True)):
            v = r.get(key)
            ok = v is not None and (v <= want if le else v >= want)
            out.append(f"W4A16 M=1 {shape}: {key} = {_fmt(v, '.2f')} (target {'<=' if le else '>='} {want}): "
                       f"{'meets' if ok else 'MISSES'}")
    return out


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Arguments of ``harness kernels bench`` (sets ``handler``)."""
    p.add_argument("--kernels", default=",".join(KERNELS), help=f"comma list of {', '.join(KERNELS)}")
    p.add_argument("--shapes", default="4096x4096,8192x8192", help="OUTxIN weight shapes, comma separated")
    p.add_argument("--m", default="1", help="activation rows (1 = decode GEMV), comma separated")
    p.add_argument("--group", type=int, default=128)
    p.add_argument("--rank", type=int, default=64, help="low-rank r of the qlr kernel")
    p.add_argument("--qlr-bits", type=int, default=2, choices=(2, 4, 8))
    p.add_argument("--dtype", default="float16", choices=sorted(DTYPES))
    p.add_argument("--warmup", type=int, default=25)
    p.add_argument("--reps", type=int, default=100)
    p.add_argument("--device", default="cuda")
    p.add_argument("--no-do-bench", action="store_true", help="skip the triton.testing.do_bench cross-check")
    p.add_argument("--json", default=None, help="also write rows + device info as JSON here")
    p.add_argument("--static", type=int, metavar="SM", default=None,
                   help="no GPU needed: compile the GEMV autotune configs for sm_SM (e.g. 90) and print registers, "
                        "spills, load widths and SASS instructions per weight byte (static facts, not speed)")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    """Run the benchmark from parsed arguments and print the table (GPUUnavailable on CPU)."""
    import json

    if args.static is not None:
        from harness.kernels import aot

        for n, k in parse_shapes(args.shapes):
            print(f"W4A16 GEMV {n}x{k} g{args.group}, sm_{args.static} (static compile facts, not speed)")
            print(aot.gemv_static_table(4, args.group, n, k, arch=args.static))
        return 0
    ms = [int(v) for v in str(args.m).split(",") if v.strip()]
    if any(m < 1 for m in ms):
        raise SpecError(f"--m {args.m!r}: every M must be >= 1")
    rows, info = run(parse_kernels(args.kernels), parse_shapes(args.shapes), ms, group=args.group, rank=args.rank,
                     qlr_bits=args.qlr_bits, dtype=args.dtype, warmup=args.warmup, reps=args.reps,
                     device=args.device, compare_do_bench=not args.no_do_bench)
    print(f"device: {info.get('gpu') or info.get('gpu_torch_name')}  peak {_fmt(info.get('peak_bw_gbps'), '.0f')} GB/s "
          f"({info.get('peak_bw_source')})")
    print(format_table(rows))
    for line in target_verdicts(rows):
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": info, "rows": rows}, f, indent=2, default=str)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry: ``python -m harness.measure.kernel_bench [options]``; exit 2 with one line on bad input
    or without a GPU."""
    p = argparse.ArgumentParser(prog="harness kernels bench", description=__doc__.splitlines()[0])
    configure_parser(p)
    args = p.parse_args(argv)
    try:
        return handle(args)
    except (ValueError, RuntimeError) as e:
        print(f"harness kernels bench: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
