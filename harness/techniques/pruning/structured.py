"""Structured pruning techniques: FFN neurons, attention head groups, whole layers.

The same number of units is removed in every layer; the surgery (physical removal,
config update, reload support) and the unit scores are in ``harness.techniques.structure``
(shared with the distillation student and GQA conversion). Importance:
- neurons: ``||W_out[:, j]|| * ||X_j||`` (Wanda-style, from calibration) or, without
  calibration, ``||W_out[:, j]|| * ||W_in[j, :]||``;
- head groups: the same, summed over the group's output-projection columns (with
  calibration) or ``||W_o[:, g]|| * ||W_v[g]||``;
- layers: Block Influence (ShortGPT: 1 - cosine(block input, block output)), each block
  scored alone (``select=influence``), or the angular distance between the input of a
  block and the output ``count`` blocks later (Gromov et al., "The Unreasonable
  Ineffectiveness of the Deeper Layers"), which drops the contiguous run that changes the
  residual stream least (``select=angular``); on the calibration windows, or on a seeded
  random-token probe without calibration.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from harness.calibration import Calibration, find_blocks
from harness.config import SpecError, check
from harness.techniques.base import Applied, Technique, register
from harness.techniques.structure import (
    angular_distances,
    group_scores,
    neuron_scores,
    probe,
    remove_ffn_neurons,
    remove_head_groups,
    remove_layers,
    run_windows,
)


@dataclass(frozen=True)
class FractionConfig:
    """fraction: share of the units (neurons / KV head groups) removed in every layer."""

    fraction: float = 0.25

    def __post_init__(self) -> None:
        check(0 < self.fraction < 1, f"fraction={self.fraction} is outside (0, 1)")


@dataclass(frozen=True)
class DropLayersConfig:
    """count: number of whole transformer blocks removed; select: which ones -- the
    ``count`` blocks of lowest Block Influence (ShortGPT), or the contiguous run of
    ``count`` blocks of smallest input-to-output angular distance (Gromov et al.)."""

    count: int = 1
    select: Literal["influence", "angular"] = "influence"

    def __post_init__(self) -> None:
        check(self.count >= 1, f"count={self.count} must be >= 1")


@torch.no_grad()
def block_influence(model: nn.Module, calib: Calibration) -> torch.Tensor:
    """ShortGPT's Block Influence per block: 1 - mean cosine(input, output) over tokens."""
    _, blocks = find_blocks(model)
    sums = torch.zeros(len(blocks), dtype=torch.float64)
    count = torch.zeros(len(blocks), dtype=torch.float64)
    handles = []

    def make(i: int):
        def hook(_m, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, (tuple, list)) else output
            cos = torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1)
            sums[i] += cos.double().sum().cpu()
            count[i] += cos.numel()
        return hook

    for i, b in enumerate(blocks):
        handles.append(b.register_forward_hook(make(i), with_kwargs=True))
    try:
        run_windows(model, calib)
    finally:
        for h in handles:
            h.remove()
    return 1 - sums / count.clamp(min=1)


def _removal_count(fraction: float, total: int, what: str) -> int:
    """Units to remove per layer: the nearest count, at least one (a prune request that
    removes nothing would measure the dense model under a pruning label). The realized
    fraction, which can exceed the request on narrow models, goes into the notes."""
    if total < 2:
        raise SpecError(f"the model has only {total} {what} per layer; none can be removed")
    k = max(1, round(fraction * total))
    if k >= total:
        raise SpecError(f"fraction={fraction} would remove every one of the {total} {what} per layer; "
                        f"use a fraction below {(total - 0.5) / total:.3g}")
    return k


# ---------------------------------------------------------------- techniques
class _Structured(Technique):
    family = "pruning"
    storage = "structural"
    needs_calibration = False
    uses_calibration = True

    def _count(self, total: int, what: str) -> tuple[int, str]:
        """Units to remove per layer and the note saying how many."""
        k = _removal_count(self.config.fraction, total, what)
        return k, (f"removed {k} of {total} {what} per layer (fraction {k / total:.3g}; "
                   f"requested {self.config.fraction:g})")

    def _keep_top(self, model: nn.Module, calibration, score, what: str, remove) -> Applied:
        """Score the units of every layer, keep the highest, physically remove the rest."""
        scores = score(model, calibration)
        k, removed = self._count(scores[0].numel(), what)
        keep = {i: torch.topk(s, s.numel() - k).indices.cpu() for i, s in enumerate(scores)}
        return _applied(remove(model, keep), calibration, removed)


def _applied(model: nn.Module, calibration, *extra: str) -> Applied:
    how = "calibration activations" if calibration is not None else "weights only (no calibration given)"
    return Applied(model, [f"weights physically removed (smaller shapes, config updated); importance from {how}",
                           *extra])


@register
class PruneNeurons(_Structured):
    name = "prune-neurons"
    config_cls = FractionConfig
    suite_specs = ("prune-neurons:fraction=0.25",)
    description = "remove FFN neurons (rows of up/gate, columns of down) in every layer"

    def apply(self, model: nn.Module, calibration=None) -> Applied:
        return self._keep_top(model, calibration, neuron_scores, "FFN neurons", remove_ffn_neurons)


@register
class PruneHeads(_Structured):
    name = "prune-heads"
    config_cls = FractionConfig
    suite_specs = ("prune-heads:fraction=0.25",)
    description = "remove attention heads by whole KV groups (GQA-aware) in every layer"

    def apply(self, model: nn.Module, calibration=None) -> Applied:
        return self._keep_top(model, calibration, group_scores, "KV head groups", remove_head_groups)


@register
class DropLayers(_Structured):
    name = "drop-layers"
    config_cls = DropLayersConfig
    suite_specs = ("drop-layers:count=1", "drop-layers:count=1,select=angular")
    description = "remove whole transformer blocks: lowest Block Influence (ShortGPT) or angular distance (Gromov)"

    def apply(self, model: nn.Module, calibration=None) -> Applied:
        _, blocks = find_blocks(model)
        n = len(blocks)
        if self.config.count >= n:
            raise SpecError(f"drop-layers:count={self.config.count} would remove every one of the {n} layers; "
                            f"at most {n - 1}")
        calib = calibration if calibration is not None else probe(model)
        if self.config.select == "angular":
            d = angular_distances(model, calib, self.config.count)
            s = int(d.argmin())
            drop = list(range(s, s + self.config.count))
            why = f"angular distance {float(d[s]):.4f} across them (select=angular)"
        else:
            bi = block_influence(model, calib)
            drop = torch.topk(bi, self.config.count, largest=False).indices.tolist()
            why = "lowest Block Influence (select=influence)"
        return _applied(remove_layers(model, drop), calibration, f"dropped blocks {sorted(drop)}: {why}")
