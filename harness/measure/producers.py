"""Producers: how each registered metric (``harness.metrics``) is measured on one model.

A producer takes ``(lm, model, ctx, want)``: the LoadedModel, the module to measure, the
evaluation context (settings, reference, KV-cache factory, CompressionResult; see
``harness.evaluation.EvalContext``) and the metrics of its group that were asked for, and
returns one Record per metric in ``want`` (a value, or N/A with the reason). Metrics name
their producer in the registry; ``harness.evaluation`` calls each producer once.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harness.measure import accuracy, energy, latency, memory
from harness.measure import size as size_mod
from harness.measure.accuracy import _device_of
from harness.records import Record

Ctx = Any  # harness.evaluation.EvalContext (a higher layer: duck-typed here)


def size(lm, model: nn.Module, ctx: Ctx, want: list[str]) -> list[Record]:
    return [r for r in size_mod.measure_size(model) if r.metric in want]


def ppl_window(lm, model: nn.Module, ctx: Ctx, want: list[str]) -> list[Record]:
    if lm.accuracy_na:
        return [Record.na("ppl.window", lm.accuracy_na)]
    value, samples = accuracy.perplexity_window_samples(model, lm.tokenizer, "validation", window=ctx.eval.window,
                                                        max_tokens=ctx.eval.max_tokens, batch=ctx.eval.batch)
    return [Record("ppl.window", value, n=len(samples["window_ids"]), samples=samples,
                   extra={"window": ctx.eval.window, "split": "validation", "max_tokens": ctx.eval.max_tokens})]


def ppl_lm_eval(lm, model: nn.Module, ctx: Ctx, want: list[str]) -> list[Record]:
    if lm.accuracy_na:
        return [Record.na("ppl.lm_eval", lm.accuracy_na)]
    from harness.measure.lm_eval_ppl import perplexity_lm_eval

    res = perplexity_lm_eval(model, lm.tokenizer, "validation", max_length=ctx.eval.window,
                             batch_size=ctx.eval.batch)
    return [Record("ppl.lm_eval", res.pop("token_perplexity"), extra=res)]


def ppl_unigram(lm, model: nn.Module, ctx: Ctx, want: list[str]) -> list[Record]:
    if lm.accuracy_na:
        return [Record.na("ppl.unigram", lm.accuracy_na)]
    return [Record("ppl.unigram", accuracy.unigram_perplexity(lm.tokenizer, window=ctx.eval.window,
                                                                max_tokens=ctx.eval.max_tokens))]


def fidelity(lm, model: nn.Module, ctx: Ctx, want: list[str]) -> list[Record]:
    if ctx.reference is None:
        return [Record.na(m, "no reference model given") for m in want]
    if lm.kind != "causal-lm":
        return [Record("fidelity.cosine", accuracy.embedding_cosine(ctx.reference, model, lm.tokenizer))]
    if lm.accuracy_na:
        return [Record.na(m, lm.accuracy_na) for m in want]
    f, samples = accuracy.fidelity_samples(ctx.reference, model, lm.tokenizer, window=ctx.eval.window,
                                           max_tokens=min(ctx.eval.max_tokens or 4096, 4096))
    return [Record(f"fidelity.{k}", v, samples=samples[k], extra={"window": ctx.eval.window})
            for k, v in f.items() if f"fidelity.{k}" in want]


def latency_(lm, model: nn.Module, ctx: Ctx, want: list[str]) -> list[Record]:
    return latency.measure_latency(model, lm.kind, ctx.latency, metrics=set(want), cache_factory=ctx.cache_factory,
                                   reference=ctx.reference if lm.kind == "causal-lm" else None)


def kv_cache(lm, model: nn.Module, ctx: Ctx, want: list[str]) -> list[Record]:
    ids = latency._prompt(model, ctx.latency)
    return [memory.measure_kv_cache(model, ids, ctx.latency.decode_tokens, ctx.cache_factory)]


def step_memory(lm, model: nn.Module, ctx: Ctx, want: list[str]) -> list[Record]:
    """Process peak RSS and the step's own increment, from one run of the inference step."""
    step = inference_step(model, lm.kind, ctx)
    if _device_of(model).type == "cuda":
        out = [Record.na("memory.peak_rss_mb", "model runs on CUDA; host RSS is not the model's footprint")]
        if "memory.step_peak_mb" in want:
            out.append(memory.cuda_step_peak(step, _device_of(model)))
        return [r for r in out if r.metric in want]
    return [r for r in memory.measure_step_memory(step) if r.metric in want]


def model_memory(lm, model: nn.Module, ctx: Ctx, want: list[str]) -> list[Record]:
    return [memory.model_resident_mb(model)]


def gpu_memory(lm, model: nn.Module, ctx: Ctx, want: list[str]) -> list[Record]:
    dev = _device_of(model)
    step = inference_step(model, lm.kind, ctx) if dev.type == "cuda" else (lambda: None)
    return [r for r in memory.measure_gpu_memory(step, dev) if r.metric in want]


def energy_(lm, model: nn.Module, ctx: Ctx, want: list[str]) -> list[Record]:
    return [energy.measure_energy(inference_step(model, lm.kind, ctx),
                                  ctx.latency.batch * ctx.latency.decode_tokens, _device_of(model))]


def compression(lm, model: nn.Module, ctx: Ctx, want: list[str]) -> list[Record]:
    """``compress.*`` come from the CompressionResult that made the model."""
    result = ctx.compression
    out = []
    for m in want:
        if result is None:
            out.append(Record.na(m, "no compression step in this evaluation (pass EvalContext(compression=...))"))
            continue
        if m.startswith("train."):
            figs = getattr(result, "figures", {}) or {}
            out.append(Record(m, figs[m]) if m in figs else
                       Record.na(m, f"technique {result.technique!r} does not train"))
            continue
        value = result.wall_s if m == "compress.wall_s" else getattr(result, "peak_rss_mb", None)
        out.append(Record(m, value) if value is not None else
                   Record.na(m, "peak RSS of the compression step could not be read on this machine"))
    return out


# The names ``Metric.producer`` uses -> functions (``latency_``/``energy_``: the modules keep their names).
PRODUCERS = {"size": size, "ppl_window": ppl_window, "ppl_lm_eval": ppl_lm_eval, "ppl_unigram": ppl_unigram,
             "fidelity": fidelity, "latency": latency_, "kv_cache": kv_cache, "peak_rss": step_memory,
             "model_memory": model_memory,
             "gpu_memory": gpu_memory, "energy": energy_, "compression": compression}


def inference_step(model: nn.Module, kind: str, ctx: Ctx):
    """The step whose memory/energy is measured: prefill + decode (LM) or a forward."""
    cfg = ctx.latency
    ids = latency._prompt(model, cfg)
    if kind == "causal-lm":
        return lambda: latency.decode(model, ids, cfg.decode_tokens, ctx.cache_factory)

    def fwd() -> None:
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return fwd

