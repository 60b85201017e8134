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


def _source(lm, ctx: Ctx) -> tuple[str, dict[str, Any]]:
    """What the perplexity protocols score: the bundled split, or ``--text FILE`` (its
    sha256 goes into the records); plus the model's provenance note (``smollm2-135m``)."""
    note = {"model_note": lm.info["note"]} if getattr(lm, "info", {}).get("note") else {}
    if ctx.eval.text:
        from pathlib import Path

        from harness.models.textfile import read_text

        text, sha = read_text(ctx.eval.text)
        return text, {"split": "text", "text_file": Path(ctx.eval.text).name, "text_sha256": sha, **note}
    return ctx.eval.split, {"split": ctx.eval.split, **note}


def ppl_window(lm, model: nn.Module, ctx: Ctx, want: list[str]) -> list[Record]:
    if lm.accuracy_na:
        return [Record.na("ppl.window", lm.accuracy_na)]
    src, extra = _source(lm, ctx)
    value, samples = accuracy.perplexity_window_samples(model, lm.tokenizer, src, window=ctx.eval.window,
                                                        max_tokens=ctx.eval.max_tokens, batch=ctx.eval.batch)
    return [Record("ppl.window", value, n=len(samples["window_ids"]), samples=samples,
                   extra={"window": ctx.eval.window, "max_tokens": ctx.eval.max_tokens, **extra})]


def ppl_lm_eval(lm, model: nn.Module, ctx: Ctx, want: list[str]) -> list[Record]:
    if lm.accuracy_na:
        return [Record.na("ppl.lm_eval", lm.accuracy_na)]
    if ctx.eval.text or ctx.eval.split == "train":
        return [Record.na("ppl.lm_eval", "its lm-eval tasks serve the bundled validation and test splits only; "
                          "ppl.window scores --text and the train split")]
    from harness.measure.lm_eval_ppl import perplexity_lm_eval
    from harness.tasks.corpus_task import documents

    limit = None
    if ctx.eval.max_tokens:  # lm-eval's --limit is in documents: the fewest whose tokens reach the budget
        limit, seen = 0, 0
        for doc in documents(ctx.eval.split):
            limit += 1
            seen += len(lm.tokenizer(doc, add_special_tokens=False)["input_ids"])
            if seen >= ctx.eval.max_tokens:
                break
    res = perplexity_lm_eval(model, lm.tokenizer, ctx.eval.split, max_length=ctx.eval.window,
                             batch_size=ctx.eval.batch, limit=limit)
    return [Record("ppl.lm_eval", res.pop("token_perplexity"), extra={**res, **_source(lm, ctx)[1]})]


def ppl_unigram(lm, model: nn.Module, ctx: Ctx, want: list[str]) -> list[Record]:
    if lm.accuracy_na:
        return [Record.na("ppl.unigram", lm.accuracy_na)]
    src, extra = _source(lm, ctx)
    return [Record("ppl.unigram", accuracy.unigram_perplexity(lm.tokenizer, eval_split=src, window=ctx.eval.window,
                                                                max_tokens=ctx.eval.max_tokens), extra=extra)]


def lm_eval_tasks(lm, model: nn.Module, ctx: Ctx, want: list[str]) -> list[Record]:
    """``task.<task>.acc`` / ``.acc_norm``: every named task in one lm-eval run."""
    if lm.accuracy_na:
        return [Record.na(m, lm.accuracy_na) for m in want]
    from harness.measure.tasks import run_tasks

    tasks = list(dict.fromkeys(m.split(".")[1] for m in want))
    res = run_tasks(model, lm.tokenizer, tasks, batch_size=ctx.eval.batch)
    note = _source(lm, ctx)[1].get("model_note")
    out = []
    for m in want:
        task, which = m.split(".")[1], m.split(".")[2]
        r = res[task]
        bits = r["correct_norm" if which == "acc_norm" else "correct"]
        se = r[f"{which}_stderr"]
        out.append(Record(m, r[which], n=r["n"], spread={"stderr": se} if se is not None else {},
                          samples={"correct_bits": bits, "items": [r["n"]]},
                          extra={"task": task, "stderr": se, "num_fewshot": 0,
                                 **({"model_note": note} if note else {})}) if r[which] is not None else
                   Record.na(m, f"lm-eval task {task!r} reports no {which}"))
    return out


def fidelity(lm, model: nn.Module, ctx: Ctx, want: list[str]) -> list[Record]:
    if ctx.reference is None:
        return [Record.na(m, "no reference model given") for m in want]
    if lm.kind != "causal-lm":
        return [Record("fidelity.cosine", accuracy.embedding_cosine(ctx.reference, model, lm.tokenizer))]
    if lm.accuracy_na:
        return [Record.na(m, lm.accuracy_na) for m in want]
    src, extra = _source(lm, ctx)
    f, samples = accuracy.fidelity_samples(ctx.reference, model, lm.tokenizer, src, window=ctx.eval.window,
                                           max_tokens=min(ctx.eval.max_tokens or 4096, 4096), batch=ctx.eval.batch)
    return [Record(f"fidelity.{k}", v, samples=samples[k], extra={"window": ctx.eval.window, **extra})
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
                   Record.na(m, getattr(result, "peak_rss_reason", None)
                             or "peak RSS of the compression step could not be read on this machine"))
    return out


# The names ``Metric.producer`` uses -> functions (``latency_``/``energy_``: the modules keep their names).
PRODUCERS = {"size": size, "ppl_window": ppl_window, "ppl_lm_eval": ppl_lm_eval, "ppl_unigram": ppl_unigram,
             "lm_eval_tasks": lm_eval_tasks,
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

