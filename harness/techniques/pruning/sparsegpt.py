"""SparseGPT (Frantar & Alistarh 2023): one-shot OBS pruning with weight reconstruction.

For each linear, with H = E[x x^T] from calibration inputs, columns are processed in
blocks of ``blocksize``: inside a block, weights are ranked by the OBS saliency
w^2 / [H^-1]_jj^2 (adaptive mask selection), pruned, and the error is propagated to the
not-yet-processed columns through the Cholesky factor of H^-1. N:M masks are chosen
every M columns. Blocks of the model are processed sequentially (``for_each_block``).
The per-layer pruned count is exact: blocks get ``round(s*end) - round(s*start)`` weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import harness.techniques.pruning.nm as nm
from harness.config import check
from harness.layers.base import linear_weight
from harness.techniques.base import Applied, register
from harness.techniques.pruning.unstructured import (
    SparsityConfig,
    UnstructuredPruning,
    prune_block_sequential,
)


@dataclass(frozen=True)
class SparseGPTConfig(SparsityConfig):
    """SparseGPT options: blocksize (columns per lazy-update block), damp (fraction of
    mean diag(H) added for numerical stability)."""

    blocksize: int = 128
    damp: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.blocksize >= 1, f"blocksize={self.blocksize} must be >= 1")
        check(0 <= self.damp < 1, f"damp={self.damp} is outside [0, 1)")


def sparsegpt_prune(weight: torch.Tensor, H: torch.Tensor, sparsity: float, pattern: tuple[int, int] | None,
                    *, blocksize: int = 128, damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune an [out, in] weight given H (sum or mean of x x^T). Returns (new W, keep mask)."""
    W = weight.detach().float().clone(memory_format=torch.contiguous_format)
    rows, cols = W.shape
    H = H.clone().float().to(W.device)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(cols, device=W.device)
    L = torch.linalg.cholesky(H)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    keep = torch.ones_like(W, dtype=torch.bool)
    total = rows * cols
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d = torch.diag(Hinv1)
        prune1 = torch.zeros_like(W1, dtype=torch.bool)
        if pattern is None:
            k = nm.prune_count(i2 * rows, sparsity) - nm.prune_count(i1 * rows, sparsity)
            if total and k:
                sal = (W1 ** 2 / d.reshape(1, -1) ** 2).reshape(-1)
                prune1.view(-1)[torch.topk(sal, k, largest=False).indices] = True
        n_keep, m = pattern if pattern is not None else (0, 0)
        for i in range(count):
            w = W1[:, i]
            if pattern is not None and i % m == 0:
                sal = W1[:, i:i + m] ** 2 / d[i:i + m].reshape(1, -1) ** 2
                prune1.scatter_(1, i + torch.topk(sal, m - n_keep, dim=1, largest=False).indices, True)
            q = w.clone()
            q[prune1[:, i]] = 0
            Q1[:, i] = q
            err = (w - q) / d[i]
            W1[:, i:] -= err.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        keep[:, i1:i2] = ~prune1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return W.to(weight.dtype), keep


@register
class SparseGPT(UnstructuredPruning):
    name = "sparsegpt"
    config_cls = SparseGPTConfig
    needs_calibration = True
    suite_specs = ("sparsegpt:sparsity=0.5", "sparsegpt:pattern=2:4")
    description = "SparseGPT: OBS-style one-shot pruning with weight update, block-sequential"

    def apply(self, model: nn.Module, calibration=None) -> Applied:
        cfg = self.config

        def prune_layer(mod: nn.Module, stats) -> torch.Tensor:
            W, keep = sparsegpt_prune(linear_weight(mod), stats.H, cfg.target, cfg.nm,
                                      blocksize=cfg.blocksize, damp=cfg.damp)
            with torch.no_grad():
                linear_weight(mod).copy_(W * keep)
            return keep

        return self.finished(prune_block_sequential(model, calibration, cfg, prune_layer, hessian=True))
