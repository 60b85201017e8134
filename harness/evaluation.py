"""Evaluate one model (optionally compressed) into Records.

This is the single path used by ``harness eval``, the ``bench`` fixture and the
benchmark scripts, so every entry point measures the same way. Metrics that cannot be
measured for this model or machine come back as N/A records with the reason.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from harness.config import EvalConfig, LatencyConfig
from harness.measure import accuracy, energy, latency, memory, size
from harness.models.zoo import LoadedModel
from harness.records import METRICS, Record

CAUSAL_DEFAULT = ("size.bytes", "size.params", "size.bits_per_param", "ppl.window", "ppl.lm_eval",
                  "fidelity.kl", "fidelity.top1", "latency.prefill_ms", "latency.decode_ms_per_token",
                  "latency.decode_tok_s", "memory.peak_rss_mb", "memory.gpu_peak_mb",
                  "energy.j_per_token")
ENCODER_DEFAULT = ("size.bytes", "size.params", "size.bits_per_param", "fidelity.cosine",
                   "latency.forward_ms", "memory.peak_rss_mb", "memory.gpu_peak_mb")
DECODE_ONLY = {"latency.prefill_ms", "latency.decode_ms_per_token", "latency.decode_tok_s",
               "ppl.window", "ppl.lm_eval", "ppl.unigram", "fidelity.kl", "fidelity.top1",
               "energy.j_per_token"}


def parse_metrics(spec: str | Iterable[str] | None, kind: str) -> list[str]:
    """Validate a metric list ("a,b" or iterable); None means the kind's defaults."""
    if spec is None:
        return list(CAUSAL_DEFAULT if kind == "causal-lm" else ENCODER_DEFAULT)
    names = [m.strip() for m in (spec.split(",") if isinstance(spec, str) else spec) if m.strip()]
    if not names:
        raise ValueError("empty metric list; give e.g. --metrics ppl.window,size.bytes")
    for m in names:
        METRICS.get(m)
    if kind != "causal-lm":
        bad = [m for m in names if m in DECODE_ONLY]
        if bad:
            raise ValueError(f"metric {bad[0]!r} needs a causal LM; {kind} models support "
                             f"{', '.join(ENCODER_DEFAULT)}")
    return names


@dataclass
class EvalContext:
    """Settings and the reference for one evaluation."""

    latency: LatencyConfig = field(default_factory=LatencyConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    reference: nn.Module | None = None  # uncompressed model for fidelity
    cache_factory: Callable | None = None  # quantized KV cache, if the technique has one


def evaluate(lm: LoadedModel, model: nn.Module | None = None, metrics: Iterable[str] | str | None = None,
             ctx: EvalContext | None = None) -> list[Record]:
    """Measure ``metrics`` of ``model`` (default: ``lm.model``). Returns Records with the
    model name filled in; technique/suite context is added by the caller."""
    ctx = ctx or EvalContext()
    model = model if model is not None else lm.model
    want = parse_metrics(metrics, lm.kind)
    dev = next(model.parameters()).device
    recs: list[Record] = []

    def na(metric: str, reason: str) -> None:
        recs.append(Record.na(metric, reason))

    size_metrics = [m for m in want if m.startswith("size.")]
    if size_metrics:
        recs += [r for r in size.measure_size(model) if r.metric in size_metrics]

    for m in ("ppl.window", "ppl.lm_eval", "ppl.unigram"):
        if m not in want:
            continue
        if lm.accuracy_na:
            na(m, lm.accuracy_na)
        elif m == "ppl.window":
            recs.append(Record(m, accuracy.perplexity_window(
                model, lm.tokenizer, "validation", window=ctx.eval.window,
                max_tokens=ctx.eval.max_tokens, batch=ctx.eval.batch),
                extra={"window": ctx.eval.window, "split": "validation",
                       "max_tokens": ctx.eval.max_tokens}))
        elif m == "ppl.unigram":
            recs.append(Record(m, accuracy.unigram_perplexity(
                lm.tokenizer, window=ctx.eval.window, max_tokens=ctx.eval.max_tokens)))
        else:
            from harness.measure.lm_eval_ppl import perplexity_lm_eval

            res = perplexity_lm_eval(model, lm.tokenizer, "validation", max_length=ctx.eval.window,
                                     batch_size=ctx.eval.batch)
            recs.append(Record(m, res.pop("token_perplexity"), extra=res))

    fid = [m for m in want if m.startswith("fidelity.")]
    if fid:
        if ctx.reference is None:
            for m in fid:
                na(m, "no reference model given")
        elif lm.accuracy_na and lm.kind == "causal-lm":
            for m in fid:
                na(m, lm.accuracy_na)
        elif lm.kind == "causal-lm":
            f = accuracy.fidelity(ctx.reference, model, lm.tokenizer, window=ctx.eval.window,
                                  max_tokens=min(ctx.eval.max_tokens or 4096, 4096))
            recs += [Record(f"fidelity.{k}", v) for k, v in f.items() if f"fidelity.{k}" in fid]
        if "fidelity.cosine" in fid:
            recs.append(Record("fidelity.cosine", accuracy.embedding_cosine(ctx.reference, model, lm.tokenizer)))

    lat = [m for m in want if m.startswith("latency.") and not m.startswith("latency.speedup")]
    if lat:
        recs += latency.measure_latency(model, lm.kind, ctx.latency, metrics=set(lat),
                                        cache_factory=ctx.cache_factory)

    step = _inference_step(model, lm.kind, ctx)
    if "memory.peak_rss_mb" in want:
        if dev.type == "cuda":
            na("memory.peak_rss_mb", "model runs on CUDA; host RSS is not the model's footprint")
        else:
            recs.append(memory.measure_peak_rss(step))
    gpu = [m for m in want if m in ("memory.gpu_peak_mb", "memory.nvml_used_mb")]
    if gpu:
        recs += [r for r in memory.measure_gpu_memory(step if dev.type == "cuda" else (lambda: None), dev)
                 if r.metric in gpu]
    if "energy.j_per_token" in want:
        recs.append(energy.measure_energy(step, ctx.latency.batch * ctx.latency.decode_tokens, dev))
    return [r.with_context(model=lm.name) for r in recs]


def _inference_step(model: nn.Module, kind: str, ctx: EvalContext) -> Callable[[], object]:
    """The step whose memory/energy is measured: prefill + decode (LM) or a forward."""
    cfg = ctx.latency
    ids = latency._prompt(model, cfg)
    if kind == "causal-lm":
        return lambda: latency.decode(model, ids, cfg.decode_tokens, ctx.cache_factory)

    def fwd() -> None:
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return fwd
