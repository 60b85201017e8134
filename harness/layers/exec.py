"""Which code path runs a packed layer on CPU, and the kernel layouts it needs.

Each packed format has a *planner* (registered by ``layer_name`` in ``PLANNERS``) that
looks at the layer's shape and arguments and returns a ``Plan``: the kernel's label, the
refused paths with their reasons (``why_not``), a ``build`` that derives kernel-specific
tensors from the portable stored buffers, and a ``run`` that computes the forward. The
plan is made on the first CPU forward (or ``kernel_info()``), cached on the module and
remade when a stored buffer changes (load_state_dict, ``.to()``). Derived tensors are
*non-persistent buffers* named ``_kc_*``: they never enter ``state_dict`` or a saved
checkpoint, but ``memory.model_mb`` counts them, so a dense cache costs what it costs.

Paths (measured in ``docs/results/cpu-kernels.md``):

- ``int4pack-bf16``: QuantLinear 2/3/4-bit, group 32..256 or per channel (``harness.kernels.cpu``);
- ``int8pack-bf16``: QuantLinear 8-bit per channel (sym or asym); W8A8Linear with its int8
  activations fed as bf16 (exact integers) and the scales applied in fp32;
- ``int4pack-bf16 + low-rank bf16``: QLRLinear (CALDERA Q, with L and R as bf16 GEMMs);
- ``int8pack-bf16 (int8 re-quantized cache)``: NF4/k-means/cluster codebooks, dequantized
  once and re-quantized to int8 per channel (counted in memory; adds an 8-bit rounding);
- ``dense-bf16 cache``: what no kernel takes (grouped int8, ragged groups, odd shapes):
  dequantized once to bf16, counted in memory;
- ``dense cache (storage savings only)``: SparseLinear, decompressed once in its dtype.

The plan itself (``Plan``, ``PLANNERS``, ``plan``, ``kernel_info``, the ``_kc_`` cache and
its opt-outs) is part of every compressed module, so it lives in ``harness.layers.base``;
this module holds the planners, the CPU forward and the model-wide summary.

Opt-out: ``HARNESS_CPU_KERNELS=0`` (environment) or ``layer.use_kernel = False`` keep the torch
reference forward (dequantize per call), so the reference path stays testable.
Autograd never goes through a kernel: an input that requires grad uses the reference; so
does everything inside ``reference_forward()`` (compression, so its result is the same on
every machine).
"""
from __future__ import annotations

import contextlib
import contextvars
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.kernels import cpu
from harness.layers.base import (
    ENV,
    LABELS,
    PLANNERS,
    REFERENCE,
    Cache,
    CompressedModule,
    Plan,
    disabled_reason,
    drop_cache,
    is_linear,
    kernel_info,
    linear_weight,
    plan,
    planner,
)
from harness.primitives.packing import unpack

DENSE_BF16 = "dense-bf16 cache"
STORAGE_ONLY = "dense cache (storage savings only)"
INT8_CACHE = "int8pack-bf16 (int8 re-quantized cache)"


_REFERENCE_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("harness_reference_forward", default=False)


@contextlib.contextmanager
def reference_forward() -> Iterator[None]:
    """Run packed layers on the torch reference inside this block. ``harness.compress`` uses
    it, so a compressed model (GPTQ's calibration passes through already quantized blocks)
    does not depend on which kernels the compressing machine has."""
    token = _REFERENCE_ONLY.set(True)
    try:
        yield
    finally:
        _REFERENCE_ONLY.reset(token)


def cpu_forward(module: CompressedModule, x: torch.Tensor) -> torch.Tensor | None:
    """The layer's output by its CPU kernel, or None to run the torch reference."""
    if x.device.type != "cpu" or (x.requires_grad and torch.is_grad_enabled()) or _REFERENCE_ONLY.get():
        return None
    p, cache = plan(module)
    return None if p.run is None else p.run(module, x, cache)


def kernel_summary(model: nn.Module) -> dict[str, Any]:
    """A model's linear layers by code path: {"kernel": "int4pack-bf16 x12, ...", "why_not":
    {path: "reason [n layers]"}, "cache_bytes": n}. Plans (and builds layouts) now, so a
    later memory reading counts them."""
    counts: Counter[str] = Counter()
    why: dict[str, Counter[str]] = {}
    cache_bytes = 0
    for mod in model.modules():
        if isinstance(mod, CompressedModule):
            info = kernel_info(mod)
        elif is_linear(mod):
            info = {"kernel": f"torch F.linear {str(linear_weight(mod).dtype).removeprefix('torch.')}",
                    "why_not": {}, "cache_bytes": 0}
        else:
            continue
        counts[info["kernel"]] += 1
        cache_bytes += info["cache_bytes"]
        for path, reason in info["why_not"].items():
            why.setdefault(path, Counter())[reason] += 1
    return {"kernel": ", ".join(f"{k} x{n}" for k, n in counts.most_common()),
            "why_not": {k: "; ".join(f"{r} [{n} layer{'s' * (n > 1)}]" for r, n in c.items()) for k, c in why.items()},
            "cache_bytes": cache_bytes}


# -- planners ---------------------------------------------------------------------------------
def _bias(module, y: torch.Tensor) -> torch.Tensor:
    return y if module.bias is None else y + module.bias.to(y.dtype)


def _dense_bf16(weight_fn: Callable[[Any], torch.Tensor], why_not: dict[str, str], label: str = DENSE_BF16) -> Plan:
    def build(m) -> Cache:
        return {"w": weight_fn(m).to(torch.bfloat16).contiguous()}

    def run(m, x, c) -> torch.Tensor:
        return _bias(m, F.linear(x.to(torch.bfloat16), c["w"]).to(x.dtype))
    return Plan(label, why_not, build, run)


def _int4_plan(out_f: int, in_f: int, bits: int, group: int | None, source: Callable[[Any], tuple]) -> Plan | str:
    """An int4pack plan over ``source(m) -> (codes, scales, zeros)``, or the refusal."""
    reason = cpu.int4pack_why_not(out_f, in_f, bits, group) or cpu.bf16_supported_reason()
    if reason:
        return reason

    def build(m) -> Cache:
        codes, s, z = source(m)
        packed, sz, g = cpu.pack_int4(codes, s, z, bits, group)
        return {"packed": packed, "scale_zeros": sz, "group": torch.tensor(g)}

    def run(m, x, c) -> torch.Tensor:
        return _bias(m, cpu.int4_mm(x, c["packed"], int(c["group"]), c["scale_zeros"], out_f))
    return Plan("int4pack-bf16", {}, build, run)


@planner("quant_linear")
def _quant(m) -> Plan:
    out_f, in_f = m.out_features, m.in_features
    if m.bits == 8:
        reason = ("group-wise scales (the kernel takes one scale per output channel)" if m.group is not None
                  else cpu.int8pack_why_not(out_f, in_f) or cpu.bf16_supported_reason())
        if reason:
            return _dense_bf16(lambda q: q.dequantize(torch.float32), {"int8pack-bf16": reason})

        def build(q) -> Cache:
            c = {"q8": (q.qweight.to(torch.int16) - 128).to(torch.int8).contiguous(),
                 "scales": q.scales[:, 0].to(torch.bfloat16).contiguous()}
            if q.zeros is not None:
                c["offset"] = ((128 - q.zeros[:, 0].float()) * q.scales[:, 0].float()).contiguous()
            elif q.mins is not None:  # w = q*s + m = (q - 128)*s + (128*s + m)
                c["offset"] = (128 * q.scales[:, 0].float() + q.mins[:, 0].float()).contiguous()
            return c

        def run(q, x, c) -> torch.Tensor:
            return _bias(q, cpu.int8_mm(x, c["q8"], c["scales"], c.get("offset")))
        return Plan("int8pack-bf16", {}, build, run)
    p = _int4_plan(out_f, in_f, m.bits, m.group, lambda q: (q.codes(), q.scales, q.zeros))
    if isinstance(p, Plan) and m.mins is not None:
        return _with_mins(p)
    if isinstance(p, Plan):
        return p
    return _dense_bf16(lambda q: q.dequantize(torch.float32), {"int4pack-bf16": p})


def _with_mins(p: Plan) -> Plan:
    """The int4pack plan of a ``mins`` layer (GGUF Q4_1): built as symmetric (float zero 0),
    then each group's float zero set to ``8*s + m``, since ``q*s + m = (q - 8)*s + (8*s + m)``."""
    def build(q) -> Cache:
        c = p.build(q)
        s, mins = q.scales.float(), q.mins.float()
        if q.group is None:  # one scale per row, repeated over the kernel's groups like pack_int4 does
            s, mins = (t.expand(-1, c["scale_zeros"].shape[0]) for t in (s, mins))
        c["scale_zeros"][..., 1] = (8 * s + mins).t().to(torch.bfloat16)
        return c
    return Plan(p.kernel, p.why_not, build, p.run)


@planner("codebook_linear", "clustered_linear")
def _codebook(m) -> Plan:
    """Non-uniform levels fit no integer kernel as they are: the dequantized weight is
    re-quantized once to int8 per output channel (an extra rounding of at most 1/254 of the
    row's largest weight, in the error column of docs/results/cpu-kernels.md) for the int8pack kernel;
    a dense-bf16 cache where that kernel refuses the shape."""
    why = {"int4pack-bf16": "non-uniform codebook levels are not (q - z) * s"}
    reason = cpu.int8pack_why_not(m.out_features, m.in_features) or cpu.bf16_supported_reason()
    if reason:
        return _dense_bf16(lambda c: c.dequantize(torch.float32), {**why, "int8pack-bf16": reason})

    def build(c) -> Cache:
        w = c.dequantize(torch.float32)
        s = (w.abs().amax(1) / 127).clamp(min=1e-12)
        return {"q8": torch.round(w / s[:, None]).clamp(-127, 127).to(torch.int8).contiguous(),
                "scales": s.to(torch.bfloat16)}

    def run(c, x, cache) -> torch.Tensor:
        return _bias(c, cpu.int8_mm(x, cache["q8"], cache["scales"]))
    return Plan(INT8_CACHE, why, build, run)


@planner("w8a8_linear")
def _w8a8(m) -> Plan:
    reason = cpu.int8pack_why_not(m.out_features, m.in_features) or cpu.bf16_supported_reason()
    if reason:
        return Plan(REFERENCE, {"int8pack-bf16": reason})

    def build(w) -> Cache:
        c = {"ones": torch.ones(w.out_features, dtype=torch.bfloat16),
             "w_scales": w.w_scales.float().contiguous()}
        q8 = cpu.aligned(w.qweight)  # the stored codes, copied (and counted) only when misaligned
        return c if q8 is w.qweight else {**c, "q8": q8}

    def run(w, x, c) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, w.in_features).float()
        if w.smooth is not None:
            x2 = x2 / w.smooth.float()
        a = (x2.abs().amax(1, keepdim=True) / 127).clamp(min=1e-8)
        xq = torch.round(x2 / a).clamp(-127, 127)  # integers: exact in bf16
        y = cpu.int8_mm(xq, c.get("q8", w.qweight), c["ones"]).float() * a * c["w_scales"]
        if w.bias is not None:
            y = y + w.bias.float()
        return y.to(x.dtype).reshape(*shape[:-1], w.out_features)
    return Plan("int8pack-bf16 (int8 activations)", {}, build, run)


@planner("qlr_linear")
def _qlr(m) -> Plan:
    def lowrank(q) -> Cache:
        _, L, R = q.factors(torch.float32)
        return {"L": L.to(torch.bfloat16).contiguous(), "R": R.to(torch.bfloat16).contiguous()}

    def run_lr(q, x, c, y) -> torch.Tensor:
        xb = x.to(torch.bfloat16)
        return _bias(q, y + F.linear(F.linear(xb, c["R"]), c["L"]).to(x.dtype))

    p = _int4_plan(m.out_features, m.in_features, m.q_bits, m.q_group,
                   lambda q: (unpack(q.q_packed, q.q_bits, q.in_features), q.q_scales, q.q_zeros))
    if isinstance(p, Plan):
        def build(q) -> Cache:
            return {**p.build(q), **lowrank(q)}

        def run(q, x, c) -> torch.Tensor:
            y = cpu.int4_mm(x, c["packed"], int(c["group"]), c["scale_zeros"], q.out_features)
            return run_lr(q, x, c, y)
        return Plan("int4pack-bf16 + low-rank bf16", {}, build, run)
    dense = _dense_bf16(lambda q: q.factors(torch.float32)[0], {"int4pack-bf16": p})

    def build_d(q) -> Cache:
        return {**dense.build(q), **lowrank(q)}

    def run_d(q, x, c) -> torch.Tensor:
        return run_lr(q, x, c, F.linear(x.to(torch.bfloat16), c["w"]).to(x.dtype))
    return Plan(DENSE_BF16 + " + low-rank bf16", dense.why_not, build_d, run_d)


@planner("sparse_linear")
def _sparse(m) -> Plan:
    def build(s) -> Cache:
        return {"w": s.dense_weight().contiguous()}

    def run(s, x, c) -> torch.Tensor:
        return F.linear(x, c["w"].to(x.dtype), None if s.bias is None else s.bias.to(x.dtype))
    return Plan(STORAGE_ONLY, {"sparse kernel": "no CPU sparse matmul beats dense at this density"}, build, run)


__all__ = ["DENSE_BF16", "ENV", "INT8_CACHE", "LABELS", "PLANNERS", "Plan", "STORAGE_ONLY", "cpu_forward",
           "disabled_reason", "drop_cache", "kernel_info", "kernel_summary", "plan", "planner", "reference_forward"]
