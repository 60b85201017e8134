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

The codebook math (levels, nearest entry, k-means, absmax scales) is in
``harness.primitives.codebook``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from harness.calibration import target_linears
from harness.config import check
from harness.layers.base import linear_weight
from harness.layers.quant import CodebookLinear
from harness.primitives.codebook import NF4_LEVELS, codebook_quantize
from harness.primitives.quant import QUANT_BITS
from harness.techniques.base import Applied, Technique, register
from harness.techniques.quantization.common import check_groups, replace


def _apply(model: nn.Module, bits: int, group: int | None, codebook: torch.Tensor | None, scaled: bool) -> nn.Module:
    linears = target_linears(model)
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

    def apply(self, model: nn.Module, calibration=None) -> Applied:
        return Applied(_apply(model, 4, self.config.group, NF4_LEVELS, scaled=True))


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

    def apply(self, model: nn.Module, calibration=None) -> Applied:
        return Applied(_apply(model, self.config.bits, self.config.group, None,
                              scaled=self.config.group is not None))
