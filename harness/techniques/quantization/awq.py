"""AWQ (Lin et al. 2024): activation-aware per-input-channel scaling before quantization.

Salient weights are those multiplied by large activations. For each input group of a
block (q/k/v, o, gate/up, down, ...) AWQ searches ``s = mean|x|^a`` (normalised) over a grid
of ``a in [0, 1]``, quantizes ``W * s`` group-wise (RTN) and keeps the ``a`` that minimises
the output error ``||W x - Q(W s)(x / s)||^2`` on calibration tokens. Optionally (``clip``)
it then searches, per weight group, a clipping ratio of the range that minimises the same
error. The scale is not folded into the previous op (that needs per-family surgery);
each QuantLinear keeps it as a float16 ``input_scale`` buffer ([in] values, counted in
bits/param) and divides its input by it. Storage is the packed QuantLinear format. The
searches themselves are tensor math in ``harness.primitives.scales``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from harness.calibration import target_linears
from harness.config import check
from harness.layers.base import linear_weight
from harness.primitives.quant import quantize_groupwise
from harness.primitives.scales import search_clip, search_scale
from harness.techniques.base import Applied, Technique, register
from harness.techniques.quantization.common import (
    WeightQuantConfig,
    calibration_notes,
    check_config,
    head_notes,
    to_quant_linear,
)
from harness.techniques.quantization.sequential import quantize_head, quantize_sequential


@dataclass(frozen=True)
class AWQConfig(WeightQuantConfig):
    """AWQ options on top of bits/group/sym (default 4-bit, group 128, asymmetric as in the
    paper): grid (number of exponents tried in [0, 1)), samples (calibration tokens used to
    score each candidate), clip (also search a per-group clipping ratio)."""

    bits: int = 4
    group: int | None = 128
    sym: bool = False
    grid: int = 20
    samples: int = 512
    clip: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.grid >= 1, f"grid={self.grid} must be >= 1")
        check(self.samples >= 16, f"samples={self.samples} must be >= 16")


@register
class AWQ(Technique):
    name = "awq"
    family = "quantization"
    config_cls = AWQConfig
    storage = "packed"
    needs_calibration = True
    suite_specs = ("awq:bits=4,group=128", "awq:bits=3,group=64")
    description = "AWQ: activation-aware channel scaling (+ clipping) before group-wise quantization, packed"

    def apply(self, model: nn.Module, calibration=None) -> Applied:
        cfg = self.config
        check_config(target_linears(model), cfg.bits, cfg.group)

        def quantize_group(mods, stats):
            first = next(iter(stats.values()))
            x = torch.cat(first.samples)[: cfg.samples]
            weights = [linear_weight(m).detach().float() for m in mods.values()]
            s = search_scale(weights, x, first.abs_mean, cfg.bits, cfg.group, cfg.sym, cfg.grid)
            out = {}
            for (name, mod), w in zip(mods.items(), weights):
                ws = w * s
                if cfg.clip:
                    ws = search_clip(ws, x / s, cfg.bits, cfg.group, cfg.sym)
                codes = quantize_groupwise(ws, cfg.bits, cfg.group, cfg.sym)
                out[name] = to_quant_linear(mod, bits=cfg.bits, group=cfg.group, sym=cfg.sym, codes=codes,
                                            input_scale=s)
            return out

        notes = head_notes(model, cfg.head)
        quantize_sequential(model, calibration, quantize_group, hessian=False, keep_samples=cfg.samples)
        if cfg.head:
            quantize_head(model, calibration, quantize_group, hessian=False, keep_samples=cfg.samples)
        return Applied(model, calibration_notes(calibration)
                       + ["input scales kept per layer (float16 [in], counted in size)", *notes])


__all__ = ["AWQ", "AWQConfig", "search_clip", "search_scale"]
