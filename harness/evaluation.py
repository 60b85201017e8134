"""Evaluate one model (optionally compressed) into Records.

This is the single path used by ``harness eval``, the ``bench`` fixture and the
benchmark scripts, so every entry point measures the same way. Metrics that cannot be
measured for this model or machine come back as N/A records with the reason.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from harness.config import EvalConfig, LatencyConfig
from harness.measure import accuracy, energy, latency, memory, size
from harness.models.zoo import LoadedModel
from harness.records import DERIVED, METRICS, Record

CAUSAL_DEFAULT = ("size.bytes", "size.params", "size.bits_per_param", "ppl.window", "ppl.lm_eval",
                  "fidelity.kl", "fidelity.top1", "latency.prefill_ms", "latency.decode_ms_per_token",
                  "latency.decode_tok_s", "memory.peak_rss_mb", "memory.kv_cache_mb", "memory.gpu_peak_mb",
                  "energy.j_per_token")
ENCODER_DEFAULT = ("size.bytes", "size.params", "size.bits_per_param", "fidelity.cosine",
                   "latency.forward_ms", "memory.peak_rss_mb", "memory.gpu_peak_mb")


def parse_metrics(spec: str | Iterable[str] | None, kind: str) -> list[str]:
    """Validate a metric list ("a,b" or iterable); None means the kind's defaults.

    Unknown names and metrics that do not apply to ``kind`` are one-line errors, so a
    requested metric is never silently absent."""
    if spec is None:
        return list(CAUSAL_DEFAULT if kind == "causal-lm" else ENCODER_DEFAULT)
    names = [m.strip() for m in (spec.split(",") if isinstance(spec, str) else spec) if m.strip()]
    if not names:
        raise ValueError("empty metric list; give e.g. --metrics ppl.window,size.bytes")
    for m in names:
        info = METRICS.get(m)
        if kind not in info.kinds:
            allowed = [n for n in METRICS.names() if kind in METRICS.get(n).kinds]
            raise ValueError(f"metric {m!r} applies only to {' and '.join(info.kinds)} models, not {kind}; "
                             f"{kind} metrics: {', '.join(allowed)}")
    return list(dict.fromkeys(names))


def derive(metric: str, model_rec: Record | None, ref_rec: Record | None) -> Record:
    """A DERIVED ratio from the model's and the reference's source records; N/A with the
    reason when either is missing. A p10-p90 band on both gives the ratio's band."""
    src, forward = DERIVED[metric]
    r, rr = model_rec, ref_rec
    if r is None or rr is None or r.value is None or rr.value is None or not r.value or not rr.value:
        why = (r.reason if r is not None and r.reason else rr.reason if rr is not None else "") or "not measured"
        return Record.na(metric, f"needs {src} of model and reference: {why}")
    ratio = (r.value / rr.value) if forward else (rr.value / r.value)
    spread = {}
    if r.spread.get("p10") and r.spread.get("p90"):  # both bands: the ratio's worst/best case
        lo, hi = r.spread["p10"], r.spread["p90"]
        rlo, rhi = rr.spread.get("p10") or rr.value, rr.spread.get("p90") or rr.value
        spread = ({"p10": lo / rhi, "p90": hi / rlo} if forward else {"p10": rlo / hi, "p90": rhi / lo})
    return Record(metric, ratio, n=r.n, spread=spread, extra={"reference": rr.value, "model": r.value, "source": src})


@dataclass
class EvalContext:
    """Settings and the reference for one evaluation."""

    latency: LatencyConfig = field(default_factory=LatencyConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    reference: nn.Module | None = None  # uncompressed model for fidelity and DERIVED ratios
    cache_factory: Callable | None = None  # quantized KV cache, if the technique has one
    compression: Any = None  # the CompressionResult that made the model (compress.* figures)


def evaluate(lm: LoadedModel, model: nn.Module | None = None, metrics: Iterable[str] | str | None = None,
             ctx: EvalContext | None = None) -> list[Record]:
    """Measure ``metrics`` of ``model`` (default: ``lm.model``). Returns one Record per
    requested metric (a value, or N/A with the reason), with the model name filled in;
    technique/suite context is added by the caller."""
    ctx = ctx or EvalContext()
    model = model if model is not None else lm.model
    want = parse_metrics(metrics, lm.kind)
    derived = [m for m in want if m in DERIVED]
    sources = {DERIVED[m][0] for m in derived}
    measured = _measure(lm, model, list(dict.fromkeys([m for m in want if m not in DERIVED] + sorted(sources))),
                        ctx)
    by = {r.metric: r for r in measured}
    recs = [r for r in measured if r.metric in want]
    if derived:
        ref = ctx.reference
        if ref is None:
            recs += [Record.na(m, "no reference model given") for m in derived]
        else:
            ref_ctx = dataclasses.replace(ctx, cache_factory=None, compression=None)
            ref_by = by if ref is model else {r.metric: r for r in _measure(lm, ref, sorted(sources), ref_ctx)}
            recs += [derive(m, by.get(DERIVED[m][0]), ref_by.get(DERIVED[m][0])) for m in derived]
    got = {r.metric for r in recs}
    lost = [m for m in want if m not in got]
    if lost:  # a bug, never a silent gap in a report
        raise RuntimeError(f"internal error: metric {lost[0]!r} was accepted but not produced")
    order = {m: i for i, m in enumerate(want)}
    return [r.with_context(model=lm.name) for r in sorted(recs, key=lambda r: order[r.metric])]


def _measure(lm: LoadedModel, model: nn.Module, want: list[str], ctx: EvalContext) -> list[Record]:
    """Every non-derived metric of ``want`` for ``model``."""
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
        else:
            recs.append(Record("fidelity.cosine", accuracy.embedding_cosine(ctx.reference, model, lm.tokenizer)))

    lat = [m for m in want if m.startswith("latency.") and m not in DERIVED]
    if lat:
        recs += latency.measure_latency(model, lm.kind, ctx.latency, metrics=set(lat),
                                        cache_factory=ctx.cache_factory)

    if "memory.kv_cache_mb" in want:
        ids = latency._prompt(model, ctx.latency)
        recs.append(memory.measure_kv_cache(model, ids, ctx.latency.decode_tokens, ctx.cache_factory))
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
    for m in (m for m in want if m.startswith("compress.")):
        recs.append(_compress_record(m, ctx.compression))
    return recs


def _compress_record(metric: str, result: Any) -> Record:
    """``compress.*`` figures come from the CompressionResult that made the model."""
    if result is None:
        return Record.na(metric, "no compression step in this evaluation (pass EvalContext(compression=...))")
    value = result.wall_s if metric == "compress.wall_s" else getattr(result, "peak_rss_mb", None)
    if value is None:
        return Record.na(metric, "peak RSS of the compression step could not be read on this machine")
    return Record(metric, value)


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
