"""Parameter sharing: cross-layer sharing, weight clustering, tied embeddings.

- ``share-layers:group=G`` (ALBERT-style): consecutive groups of ``G`` transformer blocks
  share one set of weights, initialised as the mean of the group's weights; the other
  blocks hold references to the same ``nn.Parameter`` objects, so the safetensors file
  stores each shared tensor once (``checkpoint.save_compressed`` records the aliases and
  re-ties them on load). Optional short fine-tune (``steps``) of the shared weights by
  self-distillation towards the model before sharing, on the training stream
  (``finetune``: ``steps x batch`` fresh windows of the train split, seeded order).
- ``cluster:clusters=K``: per-layer 1-D k-means of each block linear's weights into a
  float16 codebook of K values plus packed indices (an unscaled ``CodebookLinear``).
- ``tie-embeddings``: the output head reuses the input embedding matrix (initialised
  from the mean of the two, or either one), stored once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from harness.calibration import find_blocks, target_linears
from harness.config import SpecError, check
from harness.layers.base import linear_weight, set_module
from harness.layers.quant import CodebookLinear
from harness.primitives.codebook import assign_sorted, index_bits, kmeans_1d
from harness.techniques import finetune
from harness.techniques.base import Applied, Technique, from_config, register


@dataclass(frozen=True)
class ShareConfig:
    """group: consecutive blocks sharing one set of weights (must divide the block count);
    steps/lr/batch: optional fine-tune of the shared weights (0 steps = none)."""

    group: int = 2
    steps: int = 0
    lr: float = 1e-4
    batch: int = 4

    def __post_init__(self) -> None:
        check(self.group >= 2, f"group={self.group} must be >= 2 (blocks per shared set)")
        check(self.steps >= 0, f"steps={self.steps} must be >= 0")
        check(self.lr > 0, f"lr={self.lr} must be > 0")
        check(self.batch >= 1, f"batch={self.batch} must be >= 1")


def _finetune(model: nn.Module, params: list[nn.Parameter], calibration, cfg, teacher,
              notes: list[str]) -> Applied:
    """The optional fine-tune (``cfg.steps``) and the Applied with its notes and train.* figures."""
    if not cfg.steps:
        return Applied(model, notes)
    losses, figures = finetune.timed(
        lambda: finetune.finetune(model, params, calibration, steps=cfg.steps, lr=cfg.lr, batch=cfg.batch,
                                  teacher=teacher),
        cfg.steps * cfg.batch * calibration.seq_len)
    how = "self-distillation" if teacher is not None else "cross-entropy"
    where = finetune.describe_stream(calibration, cfg.steps, cfg.batch)
    return Applied(model, [*notes, f"fine-tuned {cfg.steps} steps on {where}: {how} loss "
                                   f"{finetune.loss_summary(losses)}"], figures=figures)


def share_blocks(blocks: nn.ModuleList, group: int) -> int:
    """Tie each group's parameters to the group mean; returns the elements no longer stored."""
    saved = 0
    for g0 in range(0, len(blocks), group):
        first, rest = blocks[g0], list(blocks[g0 + 1:g0 + group])
        for name, p in list(first.named_parameters()):
            mod_path, _, leaf = name.rpartition(".")
            others = [b.get_parameter(name) for b in rest]
            with torch.no_grad():
                p.copy_(torch.stack([p.detach(), *[o.detach() for o in others]]).mean(0))
            for b in rest:
                setattr(b.get_submodule(mod_path) if mod_path else b, leaf, p)
                saved += p.numel()
    return saved


@register
class ShareLayers(Technique):
    name = "share-layers"
    config_version = 2  # v2: the fine-tune (steps > 0) trains on the training stream, not calibration windows
    family = "sharing"
    config_cls = ShareConfig
    storage = "shared"
    # the optional fine-tune draws its training stream with the calibration's tokenizer
    needs_calibration = from_config(lambda cfg: cfg.steps > 0)
    needs_grad = from_config(lambda cfg: cfg.steps > 0)
    suite_specs = ("share-layers:group=2",)
    description = "ALBERT-style cross-layer sharing: groups of blocks share their mean weights"

    def apply(self, model: nn.Module, calibration=None) -> Applied:
        cfg = self.config
        _, blocks = find_blocks(model)
        if len(blocks) % cfg.group:
            divisors = [d for d in range(2, len(blocks) + 1) if len(blocks) % d == 0]
            raise SpecError(f"group={cfg.group} does not divide the {len(blocks)} layers; "
                            f"choose one of {', '.join(map(str, divisors)) or 'none (too few layers)'}")
        teacher = finetune.frozen_teacher(model) if cfg.steps else None
        saved = share_blocks(blocks, cfg.group)
        notes = [(f"{len(blocks) // cfg.group} shared sets for {len(blocks)} blocks; "
                  f"{saved} parameter elements no longer stored")]
        params = list({id(p): p for p in blocks.parameters()}.values())
        return _finetune(model, params, calibration, cfg, teacher, notes)


@dataclass(frozen=True)
class ClusterConfig:
    """clusters: codebook size per layer (2..256; indices packed at 2/3/4/8 bits);
    iters: Lloyd iterations of the 1-D k-means."""

    clusters: int = 16
    iters: int = 25

    def __post_init__(self) -> None:
        check(2 <= self.clusters <= 256, f"clusters={self.clusters} is not allowed; choose 2 <= clusters <= 256")
        check(self.iters >= 1, f"iters={self.iters} must be >= 1")


def cluster_weights(w: torch.Tensor, k: int, iters: int = 25) -> tuple[torch.Tensor, torch.Tensor]:
    """(ascending codebook [k] float16-representable, indices shaped like ``w``) minimising
    the squared error of ``w``: ``kmeans_1d`` initialised on a seeded random sample of
    100 000 weights, all ``iters`` Lloyd rounds, each weight assigned its nearest level."""
    c = kmeans_1d(w, k, iters, init_sample="random", max_sample=100_000, early_stop=False)
    return c, assign_sorted(w.detach().float().reshape(-1), c).reshape(w.shape)


@register
class Cluster(Technique):
    name = "cluster"
    family = "sharing"
    config_cls = ClusterConfig
    storage = "packed"
    suite_specs = ("cluster:clusters=16",)
    description = "weight clustering: per-layer k-means codebook + packed indices (CodebookLinear)"

    def apply(self, model: nn.Module, calibration=None) -> Applied:
        cfg = self.config
        bits = index_bits(cfg.clusters)
        for name, mod in target_linears(model).items():
            c, idx = cluster_weights(linear_weight(mod), cfg.clusters, cfg.iters)
            set_module(model, name, CodebookLinear.from_codes(idx.to(torch.uint8), c, None, bits, None,
                                                              getattr(mod, "bias", None)))
        return Applied(model, [(f"{bits}-bit packed indices + float16 codebook of {cfg.clusters} per layer; "
                                "CPU forward: int8 re-quantized cache (harness.layers.exec)")])


@dataclass(frozen=True)
class TieConfig:
    """init: the tied matrix starts as the mean of both, or the input / output one;
    steps/lr/batch: optional fine-tune of the tied matrix (0 = none)."""

    init: Literal["mean", "input", "output"] = "mean"
    steps: int = 0
    lr: float = 1e-3
    batch: int = 4

    def __post_init__(self) -> None:
        check(self.steps >= 0, f"steps={self.steps} must be >= 0")
        check(self.lr > 0, f"lr={self.lr} must be > 0")
        check(self.batch >= 1, f"batch={self.batch} must be >= 1")


@register
class TieEmbeddings(Technique):
    name = "tie-embeddings"
    config_version = 2  # v2: the fine-tune (steps > 0) trains on the training stream, not calibration windows
    family = "sharing"
    config_cls = TieConfig
    storage = "shared"
    needs_calibration = from_config(lambda cfg: cfg.steps > 0)
    needs_grad = from_config(lambda cfg: cfg.steps > 0)
    model_kinds = ("causal-lm",)
    suite_specs = ("tie-embeddings",)
    description = "tie the output head to the input embedding matrix (stored once)"

    def apply(self, model: nn.Module, calibration=None) -> Applied:
        cfg = self.config
        emb = model.get_input_embeddings()
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if head is None:
            raise SpecError(f"tie-embeddings needs an output head; {type(model).__name__} has none")
        if head.weight is emb.weight or head.weight.data_ptr() == emb.weight.data_ptr():
            raise SpecError(f"tie-embeddings: {type(model).__name__}'s embeddings are already tied")
        if head.weight.shape != emb.weight.shape:
            raise SpecError(f"tie-embeddings: head {tuple(head.weight.shape)} and input embedding "
                            f"{tuple(emb.weight.shape)} differ in shape")
        with torch.no_grad():
            if cfg.init == "mean":
                emb.weight.copy_((emb.weight + head.weight) / 2)
            elif cfg.init == "output":
                emb.weight.copy_(head.weight)
        head.weight = emb.weight
        model.config.tie_word_embeddings = True
        notes = [(f"output head tied to the input embedding ({emb.weight.numel()} elements stored once), "
                  f"init={cfg.init}")]
        return _finetune(model, [emb.weight], calibration, cfg, None, notes)


__all__ = ["Cluster", "ShareLayers", "TieEmbeddings", "cluster_weights", "share_blocks"]
