"""Evaluate one model (optionally compressed) into Records: the single path used by
``harness eval``, the ``bench`` fixture and the benchmark scripts, so every entry point
measures the same way.

- ``evaluate`` measures named metrics of one model. Each metric comes back exactly once,
  measured or N/A with the reason; which code measures it is the metric's ``producer`` in
  ``harness.metrics``, and a derived metric (a ratio against the uncompressed reference)
  follows its ``derive`` rule.
- ``compress_model`` / ``measure_result`` / ``compress_and_measure`` are the
  compress-then-evaluate flow: a technique applied to a copy of the model, its figures next
  to the reference's (deltas, derived ratios), with the reference measured once per caller.
"""
from __future__ import annotations

import dataclasses
import statistics
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from harness.config import EvalConfig, LatencyConfig
from harness.measure.producers import PRODUCERS
from harness.measure.timing import Samples
from harness.metrics import METRICS, defaults
from harness.models.hf import LoadedModel
from harness.records import Record

RefRecords = Callable[[list[str]], dict[str, Record]]  # metrics -> the reference's records


def parse_metrics(spec: str | Iterable[str] | None, kind: str) -> list[str]:
    """Validate a metric list ("a,b" or iterable); None means the kind's defaults.

    Unknown names and metrics that do not apply to ``kind`` are one-line errors, so a
    requested metric is never silently absent."""
    if spec is None:
        return defaults(kind)
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
    """A derived ratio from the model's and the reference's source records; N/A with the
    reason when either is missing. When the model's source was timed in interleaved rounds
    with the reference (``samples["reference_values"]``), the ratio is the median of the
    per-round ratios and its samples are those ratios; otherwise the ratio of the two
    values, with a worst/best-case band from both p10-p90 bands."""
    src, forward = METRICS.get(metric).derive
    r, rr = model_rec, ref_rec
    if r is None or rr is None or r.value is None or rr.value is None or not r.value or not rr.value:
        why = (r.reason if r is not None and r.reason else rr.reason if rr is not None else "") or "not measured"
        return Record.na(metric, f"needs {src} of model and reference: {why}")
    vals, refs = (r.samples or {}).get("values", []), (r.samples or {}).get("reference_values", [])
    if vals and len(vals) == len(refs) and all(vals) and all(refs):
        ratios = [(v / q) if forward else (q / v) for v, q in zip(vals, refs)]
        t = Samples(ratios)
        return Record(metric, t.median, n=t.n, spread=t.spread(), samples={"values": ratios},
                      extra={"reference": statistics.median(refs), "model": r.value, "source": src,
                             "pairing": "per-round ratios, interleaved with the reference"})
    ratio = (r.value / rr.value) if forward else (rr.value / r.value)
    spread = {}
    if r.spread.get("p10") and r.spread.get("p90"):  # both bands: the ratio's worst/best case
        lo, hi = r.spread["p10"], r.spread["p90"]
        rlo, rhi = rr.spread.get("p10") or rr.value, rr.spread.get("p90") or rr.value
        spread = ({"p10": lo / rhi, "p90": hi / rlo} if forward else {"p10": rlo / hi, "p90": rhi / lo})
    return Record(metric, ratio, n=r.n, spread=spread, extra={"reference": rr.value, "model": r.value, "source": src,
                                                              "pairing": "separate runs"})


@dataclass
class EvalContext:
    """Settings and the reference for one evaluation."""

    latency: LatencyConfig = field(default_factory=LatencyConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    reference: nn.Module | None = None  # uncompressed model for fidelity and derived ratios
    cache_factory: Callable | None = None  # quantized KV cache, if the technique has one
    compression: Any = None  # the CompressionResult that made the model (compress.* figures)


def evaluate(lm: LoadedModel, model: nn.Module | None = None, metrics: Iterable[str] | str | None = None,
             ctx: EvalContext | None = None) -> list[Record]:
    """Measure ``metrics`` of ``model`` (default: ``lm.model``). Returns one Record per
    requested metric (a value, or N/A with the reason) in the requested order, with the
    model name filled in; technique/suite context is added by the caller. Derived ratios
    measure their source metric on ``ctx.reference`` too."""
    ctx = ctx or EvalContext()
    model = model if model is not None else lm.model
    want = parse_metrics(metrics, lm.kind)
    ref = ctx.reference
    ref_fn = None if ref is None or ref is model else _reference_fn(lm, ctx)
    return _with_derived(lm, model, want, ctx, ref_fn, is_ref=ref is model, deltas=False)


def _reference_fn(lm: LoadedModel, ctx: EvalContext) -> RefRecords:
    ref_ctx = dataclasses.replace(ctx, cache_factory=None, compression=None)
    return lambda ms: {r.metric: r for r in _measure(lm, ctx.reference, ms, ref_ctx)}


def _with_derived(lm: LoadedModel, model: nn.Module, want: list[str], ctx: EvalContext, ref_fn: RefRecords | None,
                  *, is_ref: bool, deltas: bool) -> list[Record]:
    """Measure ``want``; derived metrics from the model's and the reference's sources. With
    ``deltas`` every figure is also compared with the reference's (``extra.delta_pct``)."""
    derived = [m for m in want if METRICS.get(m).derive]
    sources = [METRICS.get(m).derive[0] for m in derived]
    base = [m for m in want if m not in derived]
    need_ref = list(dict.fromkeys((base if deltas else []) + sources))
    ref = ref_fn(need_ref) if ref_fn is not None and need_ref else {}
    todo = list(dict.fromkeys(base + sources))
    if is_ref:  # the model is the reference: reuse what was measured of it, ratios of 1 against itself
        measured = [dataclasses.replace(ref[m], record_id=uuid.uuid4().hex) for m in todo if m in ref]
        measured += _measure(lm, model, [m for m in todo if m not in ref], ctx)
        ref = {r.metric: r for r in measured}
    else:
        measured = _measure(lm, model, todo, ctx)
    by = {r.metric: r for r in measured}
    recs = [r for r in measured if r.metric in base]
    if deltas and not is_ref:
        for r in recs:
            rr = ref.get(r.metric)
            if r.value is not None and rr is not None and rr.value is not None:
                r.extra = {**r.extra, "reference": rr.value, "delta": r.value - rr.value,
                           **({"delta_pct": 100 * (r.value / rr.value - 1)} if rr.value else {})}
    for m in derived:
        src = METRICS.get(m).derive[0]
        if ref_fn is None and not is_ref:
            recs.append(Record.na(m, "no reference model given"))
            continue
        if is_ref and by.get(src) is not None and by[src].value:  # exactly 1: no noise to report
            recs.append(Record(m, 1.0, extra={"reference": by[src].value, "model": by[src].value, "source": src,
                                              "pairing": "the reference itself"}))
            continue
        recs.append(derive(m, by.get(src), ref.get(src)))
    lost = [m for m in want if m not in {r.metric for r in recs}]
    if lost:  # a bug, never a silent gap in a report
        raise RuntimeError(f"internal error: metric {lost[0]!r} was accepted but not produced")
    order = {m: i for i, m in enumerate(want)}
    label_batching(recs, getattr(ctx.compression, "batch_dependence", None), ctx.eval.batch)
    return [r.with_context(model=lm.name) for r in sorted(recs, key=lambda r: order[r.metric])]


# Producers that run batched forwards over eval windows (``EvalConfig.batch``).
BATCHED_PRODUCERS = ("ppl_window", "ppl_lm_eval", "fidelity", "lm_eval_tasks")


def label_batching(recs: list[Record], reason: str | None, batch: int) -> None:
    """Label the measured accuracy records (and the ratios derived from them) of a model
    whose technique says its figures depend on the eval batching (``batch_dependence``):
    ``extra.batch_invariant = False``, the reason and the eval batch they were measured at,
    so the verdict can say the figure depends on the batching."""
    if not reason:
        return
    for r in recs:
        m = METRICS.get(r.metric)
        src = METRICS.get(m.derive[0]) if m.derive else m
        if r.value is not None and src.producer in BATCHED_PRODUCERS:
            r.extra = {**r.extra, "batch_invariant": False, "batch_dependence": reason, "eval_batch": batch}


def _measure(lm: LoadedModel, model: nn.Module, want: list[str], ctx: EvalContext) -> list[Record]:
    """Every non-derived metric of ``want``: each producer runs once for its metrics."""
    groups: dict[str, list[str]] = {}
    for m in METRICS.ordered():
        if m.name in want:
            groups.setdefault(m.producer, []).append(m.name)
    from harness.layers.exec import kernel_summary

    kern = kernel_summary(model)  # the code path of every linear; builds kernel layouts before memory is read
    recs: list[Record] = []
    for producer, names in groups.items():
        got = PRODUCERS[producer](lm, model, ctx, names)
        stages = (getattr(ctx.compression, "extra", None) or {}) if producer == "compression" else {}
        for r in got:  # which code path produced a latency, and what the layouts cost
            if stages and r.metric.startswith("compress."):  # a pipeline: its spec and per-stage figures
                r.extra = {**r.extra, **stages}
            if r.metric.startswith("latency."):
                r.extra = {**r.extra, "kernel": kern["kernel"], **({"kernel_why_not": kern["why_not"]}
                                                                   if kern["why_not"] else {})}
            elif r.metric == "memory.model_mb":
                r.extra = {**r.extra, "kernel_cache_bytes": kern["cache_bytes"]}
        recs += got
    return recs


# -- compress, then measure next to the reference ------------------------------------------------
def compress_model(lm: LoadedModel, spec: Any, *, calibration: Callable[[], Any] | Any = None,
                   device: str = "cpu"):
    """Apply ``spec`` to a copy of ``lm.model`` (the reference itself for ``none``).

    ``calibration``: the windows, or a function returning them (called only when the
    technique uses calibration). A technique that cannot run here raises a one-line
    ``DeviceUnsupportedError`` naming why (checked by the compress path before the copy)."""
    from harness.techniques.pipeline import observe_stages, stage_observer
    from harness.techniques.spec import compress, make

    tech = make(spec)  # parsed once: the Technique itself goes on to compress
    with observe_stages(stage_observer() or _stage_size):  # a pipeline records its size after each stage
        return compress(lm.model, tech, calibration, kind=lm.kind, device=device, copy=tech.name != "none")


def _stage_size(_stage: int, model: nn.Module) -> dict[str, Any]:
    """Size of a pipeline's model after one stage: the safetensors bytes and the bits per
    parameter of ``size.bytes`` / ``size.bits_per_param``."""
    from harness.measure.size import serialized_bytes, weight_storage

    bits, logical = weight_storage(model)
    return {"size_bytes": serialized_bytes(model), **({"bits_per_param": bits / logical} if logical else {})}


def unwrap(lm: LoadedModel, result: Any) -> tuple[nn.Module, bool]:
    """(the module to measure, whether it is the uncompressed reference) for a
    CompressionResult or a bare module."""
    model = result.model if hasattr(result, "model") and hasattr(result, "storage") else result
    return model, model is lm.model or getattr(result, "technique", None) == "none"


def measure_result(lm: LoadedModel, result: Any, metrics: Iterable[str] | str | None = None,
                   ctx: EvalContext | None = None, reference: RefRecords | None = None, *,
                   deltas: bool = True) -> list[Record]:
    """Figures of a CompressionResult (or a bare module) next to the uncompressed reference:
    derived ratios are computed, and with ``deltas`` every base metric also carries the
    reference's value and the change (``extra.delta_pct``; the reference is then measured
    for every metric). ``reference`` returns the reference's records (callers cache it); by
    default the reference is measured now with ``ctx``."""
    ctx = ctx or EvalContext()
    model, is_ref = unwrap(lm, result)
    want = parse_metrics(metrics, lm.kind)
    made = result if hasattr(result, "wall_s") and not is_ref else None  # the reference was not compressed
    ctx = dataclasses.replace(ctx, reference=lm.model,
                              cache_factory=ctx.cache_factory or getattr(result, "cache_factory", None),
                              compression=ctx.compression or made)
    if reference is None:
        reference = _reference_fn(lm, ctx)
    return _with_derived(lm, model, want, ctx, reference, is_ref=is_ref, deltas=deltas)


def compress_and_measure(lm: LoadedModel, spec: Any, metrics: Iterable[str] | str | None = None, *,
                         ctx: EvalContext | None = None, calibration: Callable[[], Any] | Any = None,
                         device: str = "cpu", reference: RefRecords | None = None, deltas: bool = True):
    """``compress_model`` then ``measure_result``: returns (CompressionResult, records)."""
    result = compress_model(lm, spec, calibration=calibration, device=device)
    return result, measure_result(lm, result, metrics, ctx, reference, deltas=deltas)
