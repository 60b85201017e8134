"""Pruning masks from importance scores: unstructured, per-row, global and N:M.

Every mask here is a *keep* mask (True = weight kept) in [out, in] layout. Counts are
exact: a layer pruned to sparsity ``s`` loses ``round(s * numel)`` weights (the same
rounding as ``torch.nn.utils.prune``), an N:M mask keeps exactly N of every M
consecutive input weights of each row (the layout NVIDIA's 2:4 sparse tensor cores use).
"""
from __future__ import annotations

import torch

from harness.config import SpecError
from harness.techniques.base import DeviceUnsupportedError


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """``"unstructured"`` -> None; ``"2:4"`` -> (2, 4). N kept out of every M."""
    if pattern in ("unstructured", "none", ""):
        return None
    n_s, sep, m_s = pattern.partition(":")
    try:
        n, m = int(n_s), int(m_s)
    except ValueError:
        n = m = -1
    if not sep or n < 1 or m < 1:
        raise SpecError(f"pattern={pattern!r} is not allowed; use 'unstructured' or N:M such as 2:4 or 4:8")
    if n >= m:
        raise SpecError(f"pattern={pattern!r} keeps N={n} of M={m}; N must be smaller than M (e.g. 2:4)")
    return n, m


def check_nm_shape(name: str, in_features: int, m: int) -> None:
    if in_features % m:
        raise SpecError(f"N:M pattern with M={m} does not divide in_features={in_features} of layer {name!r}")


def prune_count(numel: int, sparsity: float) -> int:
    """Weights to remove, rounded like torch.nn.utils.prune (round half to even)."""
    return round(sparsity * numel)


def lowest_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep mask removing the ``round(s*numel)`` lowest scores of the whole tensor."""
    k = prune_count(scores.numel(), sparsity)
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if k:
        keep[torch.topk(scores.reshape(-1).float(), k, largest=False).indices] = False
    return keep.view_as(scores)


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep mask removing the lowest ``round(s*in)`` scores of every output row (Wanda)."""
    k = prune_count(scores.shape[1], sparsity)
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k:
        idx = torch.topk(scores.float(), k, dim=1, largest=False).indices
        keep.scatter_(1, idx, False)
    return keep


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep mask with exactly ``n`` kept of every ``m`` consecutive inputs per row."""
    out_f, in_f = scores.shape
    if in_f % m:
        raise SpecError(f"N:M pattern with M={m} does not divide in_features={in_f}")
    groups = scores.float().reshape(out_f, in_f // m, m)
    idx = torch.topk(groups, m - n, dim=-1, largest=False).indices
    keep = torch.ones_like(groups, dtype=torch.bool).scatter_(-1, idx, False)
    return keep.view(out_f, in_f)


def global_masks(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Keep masks removing the ``round(s * total)`` lowest scores across all layers."""
    flat = torch.cat([s.reshape(-1).float() for s in scores.values()])
    keep = lowest_mask(flat, sparsity)
    out, i = {}, 0
    for name, s in scores.items():
        out[name] = keep[i: i + s.numel()].view_as(s)
        i += s.numel()
    return out


def select(scores: torch.Tensor, sparsity: float, nm: tuple[int, int] | None, *, per_row: bool = False
           ) -> torch.Tensor:
    """One layer's keep mask: N:M if given, else per-row or per-layer lowest scores."""
    if nm is not None:
        return nm_mask(scores, *nm)
    return row_mask(scores, sparsity) if per_row else lowest_mask(scores, sparsity)


def is_nm(keep: torch.Tensor, n: int, m: int) -> bool:
    """True when every group of ``m`` consecutive inputs keeps at most ``n`` weights."""
    out_f, in_f = keep.shape
    return bool((keep.reshape(out_f, in_f // m, m).sum(-1) <= n).all())


def to_semi_structured(linear: torch.nn.Linear) -> torch.nn.Linear:
    """Swap a 2:4-pruned CUDA fp16/bf16 Linear's weight for torch's semi-structured
    sparse tensor (cuSPARSELt / CUTLASS kernels). GPU only."""
    w = linear.weight
    if w.device.type != "cuda":
        raise DeviceUnsupportedError(f"2:4 semi-structured kernels need a CUDA GPU (weight is on {w.device.type})")
    if not is_nm(w.detach() != 0, 2, 4):
        raise ValueError("weight is not 2:4 sparse; prune it with pattern=2:4 first")
    from torch.sparse import to_sparse_semi_structured

    linear.weight = torch.nn.Parameter(to_sparse_semi_structured(w.detach()), requires_grad=False)
    return linear
