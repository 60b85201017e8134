"""Wanda (Sun et al. 2023): prune by |W_ij| * ||X_j||_2, compared within each output row.

Calibration runs block by block (``for_each_block``): each block's linears see inputs
produced by the already-pruned earlier blocks, as in the reference implementation.
No weight update. ``||X_j||^2`` is ``InputStats.sq_norm``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import harness.techniques.pruning.nm as nm
from harness.layers.base import linear_weight
from harness.techniques.base import Applied, register
from harness.techniques.pruning.unstructured import (
    SparsityConfig,
    UnstructuredPruning,
    apply_mask_inplace,
    prune_block_sequential,
)


@dataclass(frozen=True)
class WandaConfig(SparsityConfig):
    """Wanda options: see SparsityConfig (per-output-row comparison groups)."""


def wanda_scores(module: nn.Module, sq_norm: torch.Tensor) -> torch.Tensor:
    return linear_weight(module).detach().abs().float() * sq_norm.to(linear_weight(module).device).sqrt()[None, :]


@register
class Wanda(UnstructuredPruning):
    name = "wanda"
    config_cls = WandaConfig
    needs_calibration = True
    per_row = True
    suite_specs = ("wanda:sparsity=0.5", "wanda:pattern=2:4")
    description = "Wanda: |W| * ||X|| per output row, block-sequential, no weight update"

    def apply(self, model: nn.Module, calibration=None) -> Applied:
        cfg = self.config

        def prune_layer(mod: nn.Module, stats) -> torch.Tensor:
            keep = nm.select(wanda_scores(mod, stats.sq_norm), cfg.target, cfg.nm, per_row=True)
            apply_mask_inplace(mod, keep)  # later blocks see pruned outputs
            return keep

        return self.finished(prune_block_sequential(model, calibration, cfg, prune_layer, hessian=False))
