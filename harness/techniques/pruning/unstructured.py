"""Unstructured and N:M pruning by magnitude, Taylor and OBD importance.

Magnitude pruning goes through ``torch.nn.utils.prune`` (``l1_unstructured`` per layer,
``global_unstructured`` with ``L1Unstructured`` for scope=global, ``custom_from_mask``
for N:M) and is then made permanent with ``prune.remove``. Every method ends in
``finalize``: with ``format=dense`` the zeros stay in a dense tensor (storage "mask": no
size saving, and it is reported that way); otherwise each pruned layer becomes a
``SparseLinear`` holding only the kept values plus bitmask/CSR indices ("packed").

Only linears inside the transformer blocks are pruned (as in SparseGPT and Wanda):
embeddings, the output head and poolers stay dense.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn.utils import prune

import harness.techniques.pruning.importance as importance
import harness.techniques.pruning.nm as nm
from harness.calibration import block_linears, collect_linear_stats, find_blocks, for_each_block, target_linears
from harness.config import check
from harness.layers.base import linear_shape, set_module
from harness.layers.sparse import SparseLinear
from harness.techniques.base import Applied, Technique, from_config, register

StorageFormat = Literal["auto", "bitmask", "csr", "dense"]


@dataclass(frozen=True)
class SparsityConfig:
    """sparsity: fraction of weights removed per layer (default 0.5, or 1-N/M with a
    pattern); pattern: ``unstructured`` or ``N:M`` (N kept of every M inputs);
    format: how pruned layers are stored (auto = smaller of bitmask/CSR; dense = mask only)."""

    sparsity: float | None = None
    pattern: str = "unstructured"
    format: StorageFormat = "auto"

    def __post_init__(self) -> None:
        s = self.sparsity
        check(s is None or 0.0 <= s < 1.0, f"sparsity={s} is outside [0, 1)")
        nmp = nm.parse_pattern(self.pattern)
        if nmp is not None and s is not None:
            implied = 1 - nmp[0] / nmp[1]
            check(abs(s - implied) < 1e-9,
                  f"sparsity={s} contradicts pattern={self.pattern} (which implies sparsity={implied:g})")

    @property
    def nm(self) -> tuple[int, int] | None:
        return nm.parse_pattern(self.pattern)

    @property
    def target(self) -> float:
        p = self.nm
        if p is not None:
            return 1 - p[0] / p[1]
        return 0.5 if self.sparsity is None else self.sparsity


@dataclass(frozen=True)
class ScopedSparsityConfig(SparsityConfig):
    """As SparsityConfig, plus scope: where weights compete -- within each layer
    (``torch.nn.utils.prune.l1_unstructured``), within each output row (Wanda's
    comparison group), or across all layers (global). N:M masks are always local to
    each group of M."""

    scope: Literal["layer", "row", "global"] = "layer"


@dataclass(frozen=True)
class GradientSparsityConfig(ScopedSparsityConfig):
    """Taylor/OBD options; scope defaults to per-output-row comparison, which measured
    better than per-layer on harness-tiny (docs/results/pruning.md), as Wanda found for LLMs."""

    scope: Literal["layer", "row", "global"] = "row"


def check_nm(linears: dict[str, nn.Module], pattern: tuple[int, int] | None) -> None:
    if pattern is not None:
        for name, mod in linears.items():
            nm.check_nm_shape(name, linear_shape(mod)[1], pattern[1])


def _module_layout(module: nn.Module, keep: torch.Tensor) -> torch.Tensor:
    return keep.t() if type(module).__name__ == "Conv1D" else keep


def apply_mask_inplace(module: nn.Module, keep: torch.Tensor) -> None:
    """Zero the pruned weights of ``module`` through torch.nn.utils.prune, permanently."""
    prune.custom_from_mask(module, "weight", _module_layout(module, keep).to(module.weight.device))
    prune.remove(module, "weight")


def finalize(model: nn.Module, linears: dict[str, nn.Module], masks: dict[str, torch.Tensor],
             fmt: str) -> nn.Module:
    """Make masks permanent: zero in place (dense) or replace by SparseLinear (packed)."""
    for name, mod in linears.items():
        keep = masks[name]
        if fmt == "dense":
            apply_mask_inplace(mod, keep)
        else:
            set_module(model, name, SparseLinear.from_linear(mod, mask=keep, format=fmt))
    return model


def prune_block_sequential(model: nn.Module, calibration, cfg, prune_layer, *, hessian: bool) -> nn.Module:
    """Calibrated pruning one block at a time (Wanda, SparseGPT): ``prune_layer(module,
    stats)`` zeroes the pruned weights in place and returns the keep mask; later blocks
    see the pruned outputs; masks are finalized into ``cfg.format`` at the end."""
    linears = target_linears(model)
    check_nm(linears, cfg.nm)
    prefix, _ = find_blocks(model)
    masks: dict[str, torch.Tensor] = {}

    def prune_block(i: int, block: nn.Module, feed) -> None:
        mods = block_linears(block)
        stats = collect_linear_stats(mods, feed, hessian=hessian)
        for name, mod in mods.items():
            masks[f"{prefix}.{i}.{name}"] = prune_layer(mod, stats[name])

    for_each_block(model, calibration, prune_block)
    return finalize(model, linears, masks, cfg.format)


class UnstructuredPruning(Technique):
    """Shared plumbing: score every prunable linear, select masks, finalize."""

    family = "pruning"
    config_cls = ScopedSparsityConfig
    # format=dense keeps the zeros in a dense tensor: a mask, no size saving
    storage = from_config(lambda cfg: "mask" if cfg.format == "dense" else "packed")
    per_row = False

    def scores(self, model: nn.Module, linears: dict[str, nn.Module], calibration) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def masks(self, model: nn.Module, linears: dict[str, nn.Module], calibration) -> dict[str, torch.Tensor]:
        cfg = self.config
        scores = self.scores(model, linears, calibration)
        scope = getattr(cfg, "scope", "layer")
        if cfg.nm is None and scope == "global":
            return nm.global_masks(scores, cfg.target)
        per_row = self.per_row or scope == "row"
        return {n: nm.select(s, cfg.target, cfg.nm, per_row=per_row) for n, s in scores.items()}

    def apply(self, model: nn.Module, calibration=None) -> Applied:
        linears = target_linears(model)
        check_nm(linears, self.config.nm)
        masks = self.masks(model, linears, calibration)
        return self.finished(finalize(model, linears, masks, self.config.format))

    def finished(self, model: nn.Module) -> Applied:
        """The pruned model with the storage note for this config."""
        if self.config.format == "dense":
            return Applied(model, ["format=dense: pruned weights are zeros in dense tensors (a mask); "
                                   "no size or speed saving"])
        return Applied(model, ["packed sparse storage (values + bitmask/CSR indices); CPU forward uses a dense "
                               "cache decompressed once: storage savings only, no CPU speed-up"])


@register
class MagnitudePruning(UnstructuredPruning):
    name = "magnitude"
    needs_calibration = False
    suite_specs = ("magnitude:sparsity=0.5", "magnitude:pattern=2:4")
    description = "L1 magnitude pruning (torch.nn.utils.prune), per-layer, per-row or global, unstructured or N:M"

    def scores(self, model, linears, calibration=None):
        return {n: importance.magnitude(m) for n, m in linears.items()}

    def masks(self, model, linears, calibration=None):
        cfg = self.config
        if cfg.nm is not None or cfg.scope == "row":
            return super().masks(model, linears, calibration)
        if cfg.scope == "global":
            prune.global_unstructured([(m, "weight") for m in linears.values()],
                                      pruning_method=prune.L1Unstructured, amount=cfg.target)
        else:
            for m in linears.values():
                prune.l1_unstructured(m, "weight", amount=cfg.target)
        out = {}
        for n, m in linears.items():
            out[n] = importance.to_out_in(m, m.weight_mask.bool())
            prune.remove(m, "weight")
        return out


@register
class TaylorPruning(UnstructuredPruning):
    name = "taylor"
    config_cls = GradientSparsityConfig
    needs_calibration = True
    needs_grad = True
    model_kinds = ("causal-lm",)
    suite_specs = ("taylor:sparsity=0.5",)
    description = "first-order Taylor importance |g*w| from calibration-loss gradients"

    def scores(self, model, linears, calibration):
        return importance.taylor(model, linears, calibration)


@register
class OBDPruning(UnstructuredPruning):
    name = "obd"
    config_cls = GradientSparsityConfig
    needs_calibration = True
    needs_grad = True
    model_kinds = ("causal-lm",)
    suite_specs = ("obd:sparsity=0.5",)
    description = "Optimal Brain Damage: 1/2 * diag Fisher * w^2 from calibration-loss gradients"

    def scores(self, model, linears, calibration):
        return importance.obd(model, linears, calibration)
