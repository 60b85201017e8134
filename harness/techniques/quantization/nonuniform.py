"""Non-uniform weight quantization: NF4 (QLoRA) and a k-means codebook.

Both store packed indices into a per-layer codebook (``CodebookLinear``):

- ``nf4:group=64``: weights are divided by their group's absmax (float16 scale per
  group; ``ceil(in / group)`` groups per row, the last one ragged when ``group`` does not
  divide ``in``) and rounded to the nearest of the 16 NormalFloat-4 levels (quantiles of a normal
  distribution, Dettmers et al. 2023), the codebook stored with the layer.
- ``kmeans:bits=4[,group=G]``: a 1-D k-means codebook with ``2**bits`` centroids learned per
  layer (Lloyd's algorithm initialised at quantiles; deterministic). Without ``group`` the
  codebook is fit on the raw weights (no scales: the cheapest storage); with ``group`` the
  weights are first absmax-normalised per group like NF4 and the codebook is learned on
  the normalised values (per-layer learned NF-style levels).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from harness.config import check
from harness.layers.base import linear_weight
from harness.techniques.base import Technique, register
from harness.techniques.quantization.common import (
    block_linears_by_name,
    check_groups,
    replace,
)
from harness.techniques.quantization.uniform import (
    QUANT_BITS,
    expand_groups,
    group_width,
    n_groups,
    pad_to_groups,
)

NF4_LEVELS = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0])


def nearest(values: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook entry for each value (codebook need not be sorted)."""
    sorted_cb, order = torch.sort(codebook.float())
    mids = (sorted_cb[1:] + sorted_cb[:-1]) / 2
    return order[torch.bucketize(values.float().contiguous(), mids)]


def group_absmax(w: torch.Tensor, group: int | None) -> torch.Tensor:
    """float16-exact absmax scale per (row, group): [out, ceil(in / group)]. A ragged last
    group is zero-padded, which does not change its absmax."""
    out_f, in_f = w.shape
    g, ng = group_width(in_f, group), n_groups(in_f, group)
    s = pad_to_groups(w.float().abs(), group).reshape(out_f, ng, g).amax(-1).clamp(min=1e-6)
    r = s.to(torch.float16)
    up = torch.nextafter(r, torch.full_like(r, float("inf")))
    return torch.where(r.float() < s, up, r).float()  # round up so |w/s| <= 1


def kmeans_1d(x: torch.Tensor, k: int, iters: int = 25) -> torch.Tensor:
    """Lloyd's k-means on a 1-D tensor; deterministic quantile initialisation."""
    x = x.flatten().float()
    k = min(k, x.numel())
    cb = torch.quantile(x[torch.linspace(0, x.numel() - 1, min(x.numel(), 1 << 16)).long()] if x.numel() > 1 << 16
                        else x, (torch.arange(k, dtype=torch.float32) + 0.5) / k)
    for _ in range(iters):
        idx = nearest(x, cb)
        sums = torch.zeros(k).index_add_(0, idx, x)
        counts = torch.zeros(k).index_add_(0, idx, torch.ones_like(x))
        new = torch.where(counts > 0, sums / counts.clamp(min=1), cb)
        if torch.allclose(new, cb):
            break
        cb = new
    return cb.to(torch.float16).float()  # the stored precision


def codebook_quantize(w: torch.Tensor, bits: int, group: int | None, codebook: torch.Tensor | None,
                      scaled: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(indices uint8 [out, in], codebook [2**bits], scales [out, ng] or None)."""
    w = w.detach().float()
    scales = group_absmax(w, group) if scaled else None
    wn = w / expand_groups(scales, group, w.shape[1]) if scaled else w
    if codebook is None:
        codebook = kmeans_1d(wn, 2 ** bits)
    codebook = codebook.to(torch.float16).float()
    if codebook.numel() < 2 ** bits:
        codebook = torch.cat([codebook, codebook[-1:].expand(2 ** bits - codebook.numel())])
    return nearest(wn, codebook).to(torch.uint8), codebook, scales


def _apply(model: nn.Module, bits: int, group: int | None, codebook: torch.Tensor | None, scaled: bool) -> nn.Module:
    from harness.layers.quant import CodebookLinear

    linears = block_linears_by_name(model)
    check_groups(linears, group)
    for name, mod in linears.items():
        idx, cb, scales = codebook_quantize(linear_weight(mod), bits, group, codebook, scaled)
        replace(model, name, CodebookLinear.from_codes(idx, cb, scales, bits, group, getattr(mod, "bias", None)))
    return model


@dataclass(frozen=True)
class NF4Config:
    """group: inputs per absmax scale (none = one per output channel)."""

    group: int | None = 64

    def __post_init__(self) -> None:
        check(self.group is None or self.group >= 1, f"group={self.group} must be a positive integer or none")


@register
class NF4(Technique):
    name = "nf4"
    family = "quantization"
    config_cls = NF4Config
    storage = "packed"
    suite_specs = ("nf4:group=64", "nf4:group=128")
    description = "NormalFloat-4 codebook with per-group absmax scales (QLoRA), packed indices"

    def apply(self, model: nn.Module, calibration=None) -> nn.Module:
        return _apply(model, 4, self.config.group, NF4_LEVELS, scaled=True)


@dataclass(frozen=True)
class KMeansConfig:
    """bits: codebook size 2**bits; group: none = codebook on raw weights (no scales),
    G = absmax-normalise each group of G inputs first (float16 scale per group)."""

    bits: int = 4
    group: int | None = None

    def __post_init__(self) -> None:
        check(self.bits in QUANT_BITS, f"bits={self.bits} is not supported; choose one of "
              f"{', '.join(map(str, QUANT_BITS))}")
        check(self.group is None or self.group >= 1, f"group={self.group} must be a positive integer or none")


@register
class KMeans(Technique):
    name = "kmeans"
    family = "quantization"
    config_cls = KMeansConfig
    storage = "packed"
    suite_specs = ("kmeans:bits=4", "kmeans:bits=4,group=128", "kmeans:bits=3,group=64")
    description = "k-means codebook per layer (optionally on group-normalised weights), packed indices"

    def apply(self, model: nn.Module, calibration=None) -> nn.Module:
        return _apply(model, self.config.bits, self.config.group, None, scaled=self.config.group is not None)
