"""Reference figures of the embedded models on this machine -> docs/results/models.md.

    .venv/bin/python benchmarks/bench_models.py

harness-tiny fp32: size, validation perplexity under both protocols and the unigram
baseline; prefill latency for a 128-token prompt and decode tokens/s for harness-tiny and
harness-speed (TinyLlama-1.1B layer shapes, 2 layers), measured in one run.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from _common import fmt_record, write_doc

import harness
from harness.config import LatencyConfig
from harness.evaluation import EvalContext, evaluate
from harness.measure.environment import device_class, fingerprint

OUT = Path(__file__).resolve().parent.parent / "docs" / "results" / "models.md"
TITLE = "# Embedded models: reference figures"


def main() -> int:
    lat = LatencyConfig(batch=1, prompt_len=128, decode_tokens=32, warmup=2, min_repeats=5, budget_s=10)
    rows = []
    for name, metrics in [
        ("harness-tiny", ["size.bytes", "size.params", "ppl.window", "ppl.lm_eval", "ppl.unigram",
                          "latency.prefill_ms", "latency.decode_ms_per_token", "latency.decode_tok_s",
                          "memory.peak_rss_mb"]),
        ("harness-speed", ["size.bytes", "size.params", "ppl.window", "latency.prefill_ms",
                           "latency.decode_ms_per_token", "latency.decode_tok_s", "memory.peak_rss_mb"]),
    ]:
        t0 = time.perf_counter()
        lm = harness.load_model(name)
        load_s = time.perf_counter() - t0
        recs = evaluate(lm, metrics=metrics, ctx=EvalContext(latency=lat))
        rows.append((name, load_s, recs))
        for r in recs:
            print(f"{name:14} {r.metric:30} {fmt_record(r)}", flush=True)
    fp = fingerprint()
    lines = [f"Measured by `.venv/bin/python benchmarks/bench_models.py` on `{device_class()}` ({fp['cpu']}, "
             f"{fp['cpu_cores']} cores, torch {fp['torch']}, {fp['torch_threads']} threads). "
             "Latency: batch 1, 128-token prompt, 32 decode tokens, fp32.", ""]
    for name, load_s, recs in rows:
        lines += [f"## {name}", "", f"load time {load_s:.1f} s", "", "| metric | value |", "|---|---|"]
        for r in recs:
            v = fmt_record(r)
            if r.metric == "size.bytes" and r.value:
                v += f" ({r.value / 2**20:.2f} MiB)"
            lines.append(f"| `{r.metric}` | {v} |")
        lines.append("")
    write_doc(OUT, "\n".join(lines), section="results", blank=f"{TITLE}\n")  # the hand-written rest is kept
    return 0


if __name__ == "__main__":
    torch.manual_seed(0)
    sys.exit(main())
