"""Structured pruning techniques: FFN neurons, attention head groups, whole layers.

The same number of units is removed in every layer; the surgery (physical removal,
config update, reload support) is in ``surgery.py``. Importance:
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

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from harness.calibration import Calibration, collect_linear_stats, find_blocks
from harness.config import SpecError, check
from harness.layers.base import linear_weight
from harness.techniques.base import Applied, Technique, register
from harness.techniques.pruning.surgery import (
    attn_of,
    ffn_of,
    heads,
    remove_ffn_neurons,
    remove_head_groups,
    remove_layers,
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


# ---------------------------------------------------------------- importance
def _forward(model: nn.Module, batch: dict[str, torch.Tensor]) -> None:
    dev = next(model.parameters()).device
    kw = {k: v.to(dev) for k, v in batch.items()}
    try:
        model(**kw, use_cache=False)
    except TypeError:
        model(**kw)


def _run(model: nn.Module, calib: Calibration, batch_size: int = 8) -> None:
    for b in calib.batches(batch_size):
        _forward(model, b)


def probe(model: nn.Module, n: int = 4, seq_len: int = 64) -> Calibration:
    """Seeded random-token windows, for layer scores when no calibration is given."""
    vocab = int(getattr(model.config, "vocab_size", 1000))
    return Calibration(torch.randint(0, vocab, (n, seq_len), generator=torch.Generator().manual_seed(0)),
                       split="random-probe")


def _out_stats(model: nn.Module, paths: list[str], calib: Calibration | None) -> dict[str, torch.Tensor] | None:
    """sq_norm of the inputs of block-relative linears ``paths`` in every block (one pass)."""
    if calib is None:
        return None
    _, blocks = find_blocks(model)
    mods = {f"{i}.{p}": blocks[i].get_submodule(p) for i in range(len(blocks)) for p in paths}
    with torch.no_grad():
        stats = collect_linear_stats(mods, lambda: _run(model, calib), hessian=False)
    return {k: s.sq_norm for k, s in stats.items()}


def neuron_scores(model: nn.Module, calib: Calibration | None) -> list[torch.Tensor]:
    _, blocks = find_blocks(model)
    f = ffn_of(blocks[0])
    sq = _out_stats(model, [f.out], calib)
    out = []
    for i, block in enumerate(blocks):
        w_out = linear_weight(block.get_submodule(f.out)).detach().float()
        col = w_out.norm(dim=0)
        if sq is not None:
            out.append(col * sq[f"{i}.{f.out}"].to(col.device).sqrt())
        else:
            ins = torch.stack([linear_weight(block.get_submodule(p)).detach().float().norm(dim=1) for p in f.ins])
            out.append(col * ins.mean(0))
    return out


def group_scores(model: nn.Module, calib: Calibration | None) -> list[torch.Tensor]:
    _, blocks = find_blocks(model)
    a0 = attn_of(blocks[0])
    sq = _out_stats(model, [a0.o], calib)
    out = []
    for i, block in enumerate(blocks):
        a = attn_of(block)
        nq, nkv = heads(block, a)
        w_o = linear_weight(block.get_submodule(a.o)).detach().float()
        if sq is not None:
            per_col = w_o.square().sum(0) * sq[f"{i}.{a.o}"].to(w_o.device)
            out.append(per_col.view(nkv, -1).sum(1).sqrt())
        else:
            wq = linear_weight(block.get_submodule(a.q)).detach().float()
            if a.k is None:
                wv = wq[2 * nq * a.head_dim:]
            else:
                wv = linear_weight(block.get_submodule(a.v)).detach().float()
            out.append(w_o.square().sum(0).view(nkv, -1).sum(1).sqrt() * wv.square().sum(1).view(nkv, -1).sum(1).sqrt())
    return out


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
        _run(model, calib)
    finally:
        for h in handles:
            h.remove()
    return 1 - sums / count.clamp(min=1)


@torch.no_grad()
def angular_distances(model: nn.Module, calib: Calibration, n: int) -> torch.Tensor:
    """Gromov et al.'s ``d(x_s, x_{s+n}) = arccos(cos(x_s, x_{s+n})) / pi`` for every start
    ``s``: ``x_s`` is block s's input and ``x_{s+n}`` the output of block ``s+n-1`` (taken by
    hooks, so the last block's output is the residual stream before the final norm), mean
    over every calibration token (the paper takes each sequence's last token; with causal
    attention every position is the last token of its prefix)."""
    _, blocks = find_blocks(model)
    states: list[torch.Tensor | None] = [None] * (len(blocks) + 1)

    def grab(i: int, output: bool):
        def hook(_m, args, kwargs, *out):
            x = (out[0] if output else (args[0] if args else kwargs["hidden_states"]))
            states[i] = (x[0] if isinstance(x, (tuple, list)) else x).detach().float()
        return hook

    handles = [b.register_forward_pre_hook(grab(i, False), with_kwargs=True) for i, b in enumerate(blocks)]
    handles.append(blocks[-1].register_forward_hook(grab(len(blocks), True), with_kwargs=True))
    dist = torch.zeros(len(blocks) - n + 1, dtype=torch.float64)
    tokens = 0
    try:
        for b in calib.batches(8):
            _forward(model, b)
            mask = b.get("attention_mask")
            w = (torch.ones(b["input_ids"].shape) if mask is None else mask.float()).double()
            for s in range(dist.numel()):
                cos = torch.nn.functional.cosine_similarity(states[s], states[s + n], dim=-1)
                dist[s] += ((torch.arccos(cos.clamp(-1, 1)) / math.pi).double().cpu() * w).sum()
            tokens += float(w.sum())
    finally:
        for h in handles:
            h.remove()
    return dist / max(tokens, 1.0)


def angular_run(model: nn.Module, calib: Calibration, n: int) -> int:
    """Start of the contiguous run of ``n`` blocks with the smallest angular distance."""
    return int(angular_distances(model, calib, n).argmin())


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
