"""Two GPU facts the harness's figures rest on, measured in one process (needs CUDA):

1. CUDA-event latency (``harness.measure.timing.cuda_timer``) against ``synchronize`` + wall
   clock (``perf_counter``) around the very same call, for a long call (ten 8192^2 fp16
   matmuls) and a short one (one 4096^2 fp16 GEMV, where launch overhead shows).
2. NVML device memory against torch's ``max_memory_allocated`` on harness-speed's prefill,
   with the parts that explain the difference: the CUDA context (NVML used after
   ``torch.cuda.init`` minus before) and the allocator's cache (reserved - allocated).

    python scripts/gpu_probe.py --out probe.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def events_vs_wall(fn, reps: int = 30, warmup: int = 5) -> dict:
    import torch

    from harness.measure.timing import cuda_timer

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ev, wall = [], []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with cuda_timer(sync_before=False, wait=True) as t:
            fn()
        torch.cuda.synchronize()
        wall.append((time.perf_counter() - t0) * 1e3)
        ev.append(t.ms)
    me, mw = statistics.median(ev), statistics.median(wall)
    return {"events_ms": me, "wall_ms": mw, "diff_pct": 100 * abs(me - mw) / mw, "reps": reps,
            "agree_within_5pct": abs(me - mw) / mw <= 0.05}


def memory_explained() -> dict:
    import torch

    import harness
    from harness.measure import gpu

    before, reason = gpu.memory_used_mb(0)
    torch.cuda.init()
    torch.empty(1, device="cuda")
    torch.cuda.synchronize()
    after_init, _ = gpu.memory_used_mb(0)
    lm = harness.load_model("harness-speed", dtype=torch.float16, device="cuda")
    ids = torch.randint(0, lm.model.config.vocab_size, (1, 512), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        lm.model(input_ids=ids)
    torch.cuda.synchronize()
    used, _ = gpu.memory_used_mb(0)
    mib = 2**20
    out = {"nvml_used_before_init_mb": before, "nvml_used_after_init_mb": after_init, "nvml_used_mb": used,
           "torch_max_allocated_mb": torch.cuda.max_memory_allocated() / mib,
           "torch_max_reserved_mb": torch.cuda.max_memory_reserved() / mib,
           "torch_reserved_mb": torch.cuda.memory_reserved() / mib, "nvml_reason": reason,
           "workload": "harness-speed fp16 prefill, batch 1, 512 tokens"}
    if None not in (before, after_init, used):
        out["context_mb"] = after_init - before
        out["allocator_cache_mb"] = out["torch_reserved_mb"] - torch.cuda.memory_allocated() / mib
        out["unexplained_mb"] = used - before - out["context_mb"] - out["torch_reserved_mb"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    import torch

    from harness.measure import gpu

    if reason := gpu.cuda_available_reason():
        print(f"gpu_probe: needs a CUDA GPU ({reason})", file=sys.stderr)
        return 2
    res: dict = {"device": gpu.nvml_device_info(0)}
    res["memory"] = memory_explained()  # first: it reads NVML before this process's context exists
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    v = torch.randn(1, 4096, device="cuda", dtype=torch.float16)
    w = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
    res["timing"] = {"10x fp16 matmul 8192^2": events_vs_wall(lambda: [a @ a for _ in range(10)]),
                     "1x fp16 GEMV 1x4096 @ 4096^2": events_vs_wall(lambda: v @ w, reps=200)}
    res["clocks_after"] = gpu.clocks(0)[0]
    args.out.write_text(json.dumps(res, indent=1, default=str))
    print(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
