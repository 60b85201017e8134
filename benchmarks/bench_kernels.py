"""Triton kernel and end-to-end GPU figures -> docs/results/gpu-results.md (needs a CUDA GPU).

    .venv/bin/python benchmarks/bench_kernels.py [--out docs/results/gpu-results.md] [--quick] [--no-e2e]

1. Kernel micro-benchmark (``harness.measure.kernel_bench``): fp16 ``torch.matmul`` vs the W4A16,
   W8A16 and CALDERA Q(2-bit) + L R (r = 64) kernels at M = 1 on 4096x4096 and
   8192x8192 (group 128): CUDA events with a 256 MiB L2 flush per repetition, median and
   p10/p90, GB/s and % of peak bandwidth, speed-up over fp16, ``triton.testing.do_bench``
   agreement, max error vs the torch reference; then M = 16 and M = 2048 on 4096x4096
   (prefill GEMM, TFLOP/s).
2. harness-speed (TinyLlama-1.1B layer shapes, 2 layers) in fp16 vs RTN W4A16 g128 through
   the Triton kernels vs the same packed model on the torch dequantize path: prefill ms,
   decode tok/s, torch peak and NVML memory, NVML energy per token.
3. The issue's targets with meets / MISSES, all measured in this one run.

Without a GPU it prints why and exits 2, leaving the committed file alone.
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import sys
from pathlib import Path

import torch
from _common import fmt_record, write_doc

from harness.measure import gpu, kernel_bench

OUT = Path(__file__).resolve().parent.parent / "docs" / "results" / "gpu-results.md"


def kernel_rows(quick: bool) -> tuple[list[dict], dict]:
    reps = 30 if quick else 100
    rows, info = kernel_bench.run(list(kernel_bench.KERNELS), [(4096, 4096), (8192, 8192)], [1], group=128,
                                  rank=64, qlr_bits=2, reps=reps)
    more, _ = kernel_bench.run(["fp16", "w4a16", "w8a16"], [(4096, 4096)], [16, 2048], group=128, reps=reps)
    return rows + more, info


def e2e_records(quick: bool) -> list[tuple[str, list]]:
    """(variant, records) for fp16, W4A16 via Triton, and W4A16 via torch dequantize."""
    import harness
    from harness.config import LatencyConfig
    from harness.evaluation import EvalContext, evaluate
    from harness.layers.quant import QuantLinear

    lat = LatencyConfig(batch=1, prompt_len=128, decode_tokens=64, warmup=3, min_repeats=5,
                        budget_s=3 if quick else 10)
    metrics = ["size.bytes", "latency.prefill_ms", "latency.decode_ms_per_token", "latency.decode_tok_s",
               "memory.gpu_peak_mb", "memory.nvml_used_mb", "energy.j_per_token"]
    lm = harness.load_model("harness-speed", dtype=torch.float16, device="cuda")
    out = [("fp16", evaluate(lm, metrics=metrics, ctx=EvalContext(latency=lat)))]
    q = harness.compress(copy.deepcopy(lm.model), "rtn:bits=4,group=128").model
    out.append(("rtn w4 g128, Triton kernels", evaluate(lm, q, metrics=metrics, ctx=EvalContext(latency=lat))))
    for m in q.modules():
        if isinstance(m, QuantLinear):
            m.use_kernel = False
    out.append(("rtn w4 g128, torch dequantize", evaluate(lm, q, metrics=metrics, ctx=EvalContext(latency=lat))))
    return out


def _val(recs: list, metric: str):
    for r in recs:
        if r.metric == metric:
            return r
    return None


def _fmt_rec(r) -> str:
    return fmt_record(r, unit=False, n=False)


def render(rows: list[dict], info: dict, e2e: list[tuple[str, list]] | None) -> str:
    name = info.get("gpu") or info.get("gpu_torch_name")
    lines = [
        "# GPU results: Triton kernels and the end-to-end GPU path", "",
        (f"Measured by `.venv/bin/python benchmarks/bench_kernels.py` on **{name}** "
         f"({dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC). Driver {info.get('driver')}, "
         f"CUDA driver {info.get('cuda_driver')}, runtime {info.get('cuda_runtime')}, "
         f"SM clock {info.get('sm_clock_mhz')} / max {info.get('sm_clock_max_mhz')} MHz, "
         f"memory clock max {info.get('mem_clock_max_mhz')} MHz, bus {info.get('mem_bus_width_bits')} bit. "
         f"Peak bandwidth {kernel_bench._fmt(info.get('peak_bw_gbps'), '.0f')} GB/s ({info.get('peak_bw_source')}); "
         f"torch {torch.__version__}."), "",
        "## Kernel micro-benchmark", "",
        ("CUDA events around each launch, 256 MiB L2 flush before each repetition, 25 warm-up calls "
         "(autotuning happens there), median and p10-p90 in microseconds. GB/s counts packed weights, "
         "scales, low-rank factors, x and y. `x fp16` = fp16 `torch.matmul` median / kernel median on the "
         "same shape. `do_bench` = `triton.testing.do_bench` median on the same callable; `agree %` = "
         "abs(events - do_bench) / do_bench. `qlr` = CALDERA Q (2-bit, g128) + L R (r = 64), two launches."), "",
        kernel_bench.format_table(rows), "", "Autotuned configs:", "",
    ]
    for r in rows:
        if r.get("config"):
            lines.append(f"- {r['kernel']} M={r['M']} {r['N']}x{r['K']}: `{r['config']}`"
                         + (f", R x: `{r['rx_config']}`" if r.get("rx_config") else ""))
    lines += ["", "## Targets", ""] + [f"- {v}" for v in kernel_bench.target_verdicts(rows)]
    if e2e:
        base = _val(e2e[0][1], "latency.decode_tok_s")
        lines += ["", "## harness-speed end to end (fp16 activations, batch 1, 128-token prompt, 64 decode tokens)",
                  "", "The lm_head (32000 x 2048, fp16) is not quantized, so it bounds the decode speed-up.", "",
                  ("| variant | size MiB | prefill ms | decode tok/s | ratio vs fp16 | torch peak MiB | NVML MiB "
                   "| J/token |"), "|---|---|---|---|---|---|---|---|"]
        for variant, recs in e2e:
            tok = _val(recs, "latency.decode_tok_s")
            ratio = (f"{tok.value / base.value:.2f}" if tok and base and tok.value and base.value else "N/A")
            size = _val(recs, "size.bytes")
            lines.append(" | ".join([
                f"| {variant}", f"{size.value / 2**20:.1f}" if size and size.value else "N/A",
                _fmt_rec(_val(recs, "latency.prefill_ms")), _fmt_rec(tok), ratio,
                _fmt_rec(_val(recs, "memory.gpu_peak_mb")), _fmt_rec(_val(recs, "memory.nvml_used_mb")),
                _fmt_rec(_val(recs, "energy.j_per_token"))]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run, not for the docs)")
    p.add_argument("--no-e2e", action="store_true", help="skip the harness-speed end-to-end section")
    args = p.parse_args(argv)
    reason = gpu.cuda_available_reason()
    if reason:
        print(f"bench_kernels: needs a CUDA GPU ({reason}); nothing measured, {args.out} left unchanged",
              file=sys.stderr)
        return 2
    rows, info = kernel_rows(args.quick)
    print(kernel_bench.format_table(rows), flush=True)
    e2e = None if args.no_e2e else e2e_records(args.quick)
    text = render(rows, info, e2e)
    print(text)
    write_doc(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
