"""Latency of real forwards.

Causal LMs: *prefill* is one forward over a ``prompt_len`` prompt that returns the
first token's logits and fills the KV cache (time to first token); *decode* is
``decode_tokens`` greedy steps, each one forward of one token per sequence against the
cache (time per output token = wall time of the decode loop / tokens). Encoders: one
forward over a batch. Random prompts are seeded; every repeat uses a fresh cache.
The torch thread count and the timer go into each record.

Comparisons of two or more callables (benchmarks: dense against compressed, a kernel
against fp32) go through ``ab_timing`` / ``interleaved_rounds``: ABBA rounds and per-round
ratios, so the drift of a shared host cancels within a round.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from harness.config import LatencyConfig, check
from harness.measure.timing import Samples, Timer, sample, sample_paired
from harness.records import Record

Clock = Callable[[], float]


def time_ms(fn: Callable[[], object], clock: Clock = time.perf_counter) -> float:
    """Milliseconds ``clock`` advances over one call of ``fn``."""
    t0 = clock()
    fn()
    return (clock() - t0) * 1e3


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


def decode_step_ms(model: nn.Module, ids: torch.Tensor, steps: int, *, cache_factory=None,
                   clocks: Sequence[Clock] = (time.perf_counter,)) -> tuple[float, ...]:
    """Milliseconds per cached step of ``greedy_decode`` (prefill untimed), one figure per
    clock read around the same loop: ``(time.perf_counter, time.thread_time)`` gives wall
    and this thread's CPU time of one decode, which on a shared host (one torch thread)
    leaves out the time slices other jobs took."""
    check(steps >= 1, f"steps={steps} must be >= 1")

    def timer(loop: Callable[[], None]) -> tuple[float, ...]:
        t0 = [c() for c in clocks]
        loop()
        return tuple((c() - s) * 1e3 / steps for c, s in zip(clocks, t0))

    return greedy_decode(model, ids, steps, cache_factory, timer=timer)[2]


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


T = TypeVar("T")


def interleaved_rounds(fns: Sequence[Callable[[], T]], *, rounds: int, warmup: int = 1,
                       on_round: Callable[[int, list[T]], None] | None = None) -> list[list[T]]:
    """Call every ``fn`` once per round for ``rounds`` rounds, after ``warmup`` unrecorded
    rounds, in ABBA order (first to last on even rounds, last to first on odd ones, as
    ``sample_paired``), so a host that drifts during the run, or a cache one side warms
    for the next, hits every side alike. Returns what each call returned, [side][round];
    ``on_round(r, results of round r)`` runs after each recorded round (progress lines)."""
    check(len(fns) >= 2, f"fns={fns!r}: need at least two callables to interleave")
    for i, f in enumerate(fns):
        check(callable(f), f"fns[{i}]={f!r} is not callable")
    check(isinstance(rounds, int) and rounds >= 1, f"rounds={rounds!r} must be an int >= 1")
    check(isinstance(warmup, int) and warmup >= 0, f"warmup={warmup!r} must be an int >= 0")
    out: list[list[T]] = [[] for _ in fns]
    for r in range(-warmup, rounds):
        order = range(len(fns)) if r % 2 == 0 else range(len(fns) - 1, -1, -1)
        got = {i: fns[i]() for i in order}
        if r >= 0:
            for i in range(len(fns)):
                out[i].append(got[i])
            if on_round:
                on_round(r, [got[i] for i in range(len(fns))])
    return out


@dataclass(frozen=True)
class ABTiming:
    """Interleaved timings, ms [side][round]. Ratios are per round, ``base`` over ``side``
    (the speed-up of ``side`` when ``base`` is the reference): both were timed in the same
    round, so the ratio is immune to drift between rounds, which a ratio of medians is not."""

    samples: tuple[tuple[float, ...], ...]

    @classmethod
    def of(cls, samples: Sequence[Sequence[float]]) -> ABTiming:
        return cls(tuple(tuple(float(v) for v in side) for side in samples))

    @property
    def medians(self) -> tuple[float, ...]:
        return tuple(Samples(list(side)).median for side in self.samples)

    def ratios(self, side: int = 1, base: int = 0) -> list[float]:
        return [b / s for b, s in zip(self.samples[base], self.samples[side])]

    def ratio(self, side: int = 1, base: int = 0) -> float:
        """Median of the per-round ratios."""
        return Samples(self.ratios(side, base)).median

    def interval(self, side: int = 1, base: int = 0, lo: float = 0.1, hi: float = 0.9) -> tuple[float, float]:
        """Percentiles (default p10, p90) of the per-round ratios: their spread, no bootstrap."""
        s = Samples(self.ratios(side, base))
        return s.quantile(lo), s.quantile(hi)


def ab_timing(fns: Sequence[Callable[[], object]], *, rounds: int, warmup: int = 1,
              clock: Clock = time.perf_counter) -> ABTiming:
    """Time two or more zero-argument callables in interleaved ABBA rounds
    (``interleaved_rounds``), each call read by ``clock`` (``time.thread_time`` leaves out
    other jobs' time slices on a shared host). ``ab_timing([dense, pruned], rounds=8).ratio()``
    is the pruned model's speed-up: the median of per-round ratios, ``.interval()`` their p10-p90."""
    def timed(f: Callable[[], object]) -> Callable[[], float]:
        return lambda: time_ms(f, clock)

    for i, f in enumerate(fns):
        check(callable(f), f"fns[{i}]={f!r} is not callable")
    return ABTiming.of(interleaved_rounds([timed(f) for f in fns], rounds=rounds, warmup=warmup))


def speedup(reference: Record, candidate: Record) -> float:
    """Realized speed-up of candidate over reference for a latency or throughput metric."""
    if reference.value is None or candidate.value is None or not candidate.value:
        raise ValueError("speed-up needs two measured values")
    if reference.higher_is_better:
        return candidate.value / reference.value
    return reference.value / candidate.value
