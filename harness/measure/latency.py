"""Latency of real forwards.

Causal LMs: *prefill* is one forward over a ``prompt_len`` prompt that returns the
first token's logits and fills the KV cache (time to first token); *decode* is
``decode_tokens`` greedy steps, each one forward of one token per sequence against the
cache (time per output token = wall time of the decode loop / tokens). Encoders: one
forward over a batch. Random prompts are seeded; every repeat uses a fresh cache.
The torch thread count and the timer go into each record.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from harness.config import LatencyConfig
from harness.measure.timing import Samples, Timer, sample, sample_paired
from harness.records import Record


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _prompt(model: nn.Module, cfg: LatencyConfig, vocab_limit: int | None = None) -> torch.Tensor:
    vocab = int(getattr(model.config, "vocab_size", 1000))
    if vocab_limit:
        vocab = min(vocab, vocab_limit)
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (cfg.batch, cfg.prompt_len), generator=g).to(_device_of(model))


def _context(cfg: LatencyConfig, timer: Timer, **extra) -> dict:
    return {"batch": cfg.batch, "prompt_len": cfg.prompt_len, "threads": torch.get_num_threads(),
            "timer": timer.name, **extra}


def _rec(metric: str, s: Samples, transform=None, ref: Samples | None = None, **extra) -> Record:
    f = transform or (lambda v: v)
    t = Samples([f(v) for v in s.values], s.timer)
    samples = {"values": t.values}
    if ref is not None:  # interleaved rounds of the reference: derived speed-ups pair round by round
        samples["reference_values"] = [f(v) for v in ref.values]
        extra = {**extra, "pairing": "interleaved with the reference"}
    return Record(metric, t.median, n=t.n, spread=t.spread(), samples=samples, extra=extra)


@torch.inference_mode()
def prefill(model: nn.Module, ids: torch.Tensor, cache_factory=None):
    """One prompt forward returning the last position's logits and the filled cache
    (``cache_factory()``'s cache object when given, else the model's default)."""
    kw = {"past_key_values": cache_factory()} if cache_factory else {}
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **kw)
    return out.logits[:, -1], out.past_key_values


@torch.inference_mode()
def greedy_decode(model: nn.Module, ids: torch.Tensor, steps: int, cache_factory=None, *,
                  timer: Callable[[Callable[[], None]], Any] | None = None) -> tuple[torch.Tensor, Any, Any]:
    """The one greedy decode loop: prefill ``ids`` (one forward that fills the KV cache and
    gives the first token), then ``steps`` cached one-token forwards, each feeding back the
    argmax of the last. Returns (generated ids [batch, steps + 1], final cache, what
    ``timer(loop)`` returned, or None). ``timer`` wraps only the cached steps: the prefill
    is never inside the timed region."""
    logits, cache = prefill(model, ids, cache_factory)
    state = {"cache": cache, "tok": logits.argmax(-1, keepdim=True)}
    gen = [state["tok"]]

    def loop() -> None:
        for _ in range(steps):
            o = model(input_ids=state["tok"], past_key_values=state["cache"], use_cache=True)
            state["cache"] = o.past_key_values
            state["tok"] = o.logits[:, -1].argmax(-1, keepdim=True)
            gen.append(state["tok"])

    timed = timer(loop) if timer else loop()
    return torch.cat(gen, 1), state["cache"], timed


def decode_with_cache(model: nn.Module, ids: torch.Tensor, n_tokens: int, cache_factory=None):
    """Greedy decode ``n_tokens`` after prefill; returns (generated ids [batch, n], final cache)."""
    gen, cache, _ = greedy_decode(model, ids, n_tokens - 1, cache_factory)
    return gen, cache


def decode(model: nn.Module, ids: torch.Tensor, n_tokens: int, cache_factory=None) -> torch.Tensor:
    """Greedy decode ``n_tokens`` after prefill; returns the generated ids [batch, n]."""
    return decode_with_cache(model, ids, n_tokens, cache_factory)[0]


def measure_latency(model: nn.Module, kind: str = "causal-lm", cfg: LatencyConfig | None = None,
                    *, metrics: set[str] | None = None, cache_factory=None,
                    reference: nn.Module | None = None) -> list[Record]:
    """Prefill and decode (causal LM) or forward (encoder) latency records.

    ``cache_factory`` builds the KV cache object for each decode repeat (KV-cache
    quantization passes its quantized cache here). With a ``reference`` model (causal LM),
    every round times the model and the reference back to back (``sample_paired``) and the
    records carry the reference's rounds as ``samples["reference_values"]``: speed-ups are
    then ratios within a round, immune to the host drifting between rounds or runs."""
    cfg = cfg or LatencyConfig()
    want = metrics or ({"latency.prefill_ms", "latency.decode_ms_per_token", "latency.decode_tok_s"}
                       if kind == "causal-lm" else {"latency.forward_ms"})
    if kind != "causal-lm" and want & {"latency.prefill_ms", "latency.decode_ms_per_token",
                                       "latency.decode_tok_s"}:
        raise ValueError(f"decode/prefill latency asked of an {kind} model; use latency.forward_ms")
    dev = _device_of(model)
    timer = Timer(dev)
    model.eval()
    ids = _prompt(model, cfg)
    recs: list[Record] = []
    run = dict(warmup=cfg.warmup, min_repeats=cfg.min_repeats, max_repeats=cfg.max_repeats,
               budget_s=cfg.budget_s, timer=timer.name)
    if kind != "causal-lm":
        mask = torch.ones_like(ids)
        with torch.inference_mode():
            s = sample(lambda: timer(lambda: model(input_ids=ids, attention_mask=mask)), **run)
        return [_rec("latency.forward_ms", s, **_context(cfg, timer))]
    paired = reference is not None and reference is not model
    if paired:
        reference.eval()

    def measured(fn, ref_fn) -> tuple[Samples, Samples | None]:
        return sample_paired(fn, ref_fn, **run) if paired else (sample(fn, **run), None)

    if "latency.prefill_ms" in want:
        if cache_factory:
            fn = lambda: timer(lambda: model(input_ids=ids, use_cache=True, logits_to_keep=1,  # noqa: E731
                                             past_key_values=cache_factory()))
        else:
            fn = lambda: timer(lambda: prefill(model, ids))  # noqa: E731
        s, r = measured(fn, lambda: timer(lambda: prefill(reference, ids)))
        recs.append(_rec("latency.prefill_ms", s, ref=r, **_context(cfg, timer)))
    if want & {"latency.decode_ms_per_token", "latency.decode_tok_s"}:
        n = cfg.decode_tokens

        def one(m: nn.Module, factory) -> float:
            # Prefill is outside the timed region: only the n cached steps are timed.
            return greedy_decode(m, ids, n, factory, timer=timer)[2] / n

        s, r = measured(lambda: one(model, cache_factory), lambda: one(reference, None))
        ctx = _context(cfg, timer, decode_tokens=n)
        if "latency.decode_ms_per_token" in want:
            recs.append(_rec("latency.decode_ms_per_token", s, ref=r, **ctx))
        if "latency.decode_tok_s" in want:
            recs.append(_rec("latency.decode_tok_s", s, transform=lambda ms: cfg.batch * 1e3 / ms, ref=r, **ctx))
    return recs


def speedup(reference: Record, candidate: Record) -> float:
    """Realized speed-up of candidate over reference for a latency or throughput metric."""
    if reference.value is None or candidate.value is None or not candidate.value:
        raise ValueError("speed-up needs two measured values")
    if reference.higher_is_better:
        return candidate.value / reference.value
    return reference.value / candidate.value
