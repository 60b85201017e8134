"""AWQ (Lin et al. 2024): activation-aware per-input-channel scaling before quantization.

Salient weights are those multiplied by large activations. For each input group of a
block (q/k/v, o, gate/up, down, ...) AWQ searches ``s = mean|x|^a`` (normalised) over a grid
of ``a in [0, 1]``, quantizes ``W * s`` group-wise (RTN) and keeps the ``a`` that minimises
the output error ``||W x - Q(W s)(x / s)||^2`` on calibration tokens. Optionally (``clip``)
it then searches, per weight group, a clipping ratio of the range that minimises the same
error. The scale is not folded into the previous op (that needs per-family surgery);
each QuantLinear keeps it as a float16 ``input_scale`` buffer ([in] values, counted in
bits/param) and divides its input by it. Storage is the packed QuantLinear format.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from harness.config import check
from harness.layers.base import linear_weight
from harness.techniques.base import Technique, register
from harness.techniques.quantization.common import (
    WeightQuantConfig,
    block_linears_by_name,
    calibration_notes,
    check_config,
    to_quant_linear,
)
from harness.techniques.quantization.sequential import quantize_sequential
from harness.techniques.quantization.uniform import (
    group_width,
    n_groups,
    pad_to_groups,
    quantize_groupwise,
    rtn_fake_quant,
)


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


def _out_err(Ws: list[torch.Tensor], Wq: list[torch.Tensor], x: torch.Tensor) -> float:
    return sum(float((x @ (w - q).t()).pow(2).mean()) for w, q in zip(Ws, Wq))


def search_scale(weights: list[torch.Tensor], x: torch.Tensor, x_mean: torch.Tensor, bits: int,
                 group: int | None, sym: bool, grid: int = 20) -> torch.Tensor:
    """The AWQ input-channel scale (float16-exact, [in]) for linears sharing input ``x``."""
    x = x.float()
    best, best_s = float("inf"), torch.ones_like(x_mean)
    for k in range(grid):
        a = k / grid
        s = x_mean.clamp(min=1e-4).pow(a)
        s = (s / (s.max() * s.min()).sqrt()).to(torch.float16).float()
        wq = [rtn_fake_quant(w * s, bits, group, sym) / s for w in weights]
        err = _out_err(weights, wq, x)
        if err < best:
            best, best_s = err, s
    return best_s


def search_clip(w: torch.Tensor, x: torch.Tensor, bits: int, group: int | None, sym: bool,
                ratios: tuple[float, ...] = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5)
                ) -> torch.Tensor:
    """Clip each weight group to the ratio of its range that minimises its output error.

    A ragged last group (``group`` not dividing ``in``) is searched like the others: weights
    and inputs are zero-padded to whole groups (padded inputs contribute nothing to the
    error) and the padding is dropped from the result."""
    out_f, in_f = w.shape
    g, ng = group_width(in_f, group), n_groups(in_f, group)
    wg = pad_to_groups(w, group).reshape(out_f, ng, g)
    xg = pad_to_groups(x.float(), group).reshape(-1, ng, g)  # [tokens, ng, g]
    ref = torch.einsum("tng,ong->ton", xg, wg)
    best = torch.full((out_f, ng), float("inf"), device=w.device)
    best_w = wg.clone()
    hi0, lo0 = wg.amax(-1, keepdim=True), wg.amin(-1, keepdim=True)
    for r in ratios:
        wc = torch.maximum(torch.minimum(wg, hi0 * r), lo0 * r)
        q = rtn_fake_quant(wc.reshape(out_f, ng * g)[:, :in_f], bits, group, sym)
        q = pad_to_groups(q, group).reshape(out_f, ng, g)
        err = (torch.einsum("tng,ong->ton", xg, q) - ref).pow(2).mean(0)  # [out, ng]
        better = err < best
        best = torch.where(better, err, best)
        best_w = torch.where(better.unsqueeze(-1), wc, best_w)
    return best_w.reshape(out_f, ng * g)[:, :in_f]


@register
class AWQ(Technique):
    name = "awq"
    family = "quantization"
    config_cls = AWQConfig
    storage = "packed"
    needs_calibration = True
    suite_specs = ("awq:bits=4,group=128", "awq:bits=3,group=64")
    description = "AWQ: activation-aware channel scaling (+ clipping) before group-wise quantization, packed"

    def apply(self, model: nn.Module, calibration=None) -> nn.Module:
        cfg = self.config
        check_config(block_linears_by_name(model), cfg.bits, cfg.group)
        self._calib = calibration_notes(calibration)

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

        quantize_sequential(model, calibration, quantize_group, hessian=False, keep_samples=cfg.samples)
        return model

    def notes(self) -> list[str]:
        return list(getattr(self, "_calib", [])) + ["input scales kept per layer (float16 [in], counted in size)"]


__all__ = ["AWQ", "AWQConfig", "search_clip", "search_scale"]
