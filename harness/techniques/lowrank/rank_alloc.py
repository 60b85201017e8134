"""Rank allocation across layers under one global parameter budget.

The budget: the factorized layers keep ``(1 - reduction)`` of their dense weight count;
a rank-``r`` factorization of an ``[out, in]`` layer costs ``r (in + out)``.

- ``uniform``: every layer keeps the same fraction (``r = ⌊(1-reduction)·in·out/(in+out)⌋``).
- ``by_energy``: singular values of all layers compete for the budget, each scored by the
  fraction of its layer's (whitened, for SVD-LLM) spectral energy per parameter it costs.
- ``by_sensitivity`` (ASVD's sensitivity-based truncation): each layer is truncated alone
  to each candidate parameter ratio and the calibration loss is *measured*; then a loss
  threshold is bisected so the layers, each at the smallest ratio whose loss increase is
  under the threshold, fit the budget. Ratio 1.0 keeps a layer dense.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from harness.config import SpecError
from harness.layers.base import linear_shape, set_module

RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _cost(mod: nn.Module) -> tuple[int, int]:
    out_f, in_f = linear_shape(mod)
    return out_f * in_f, out_f + in_f


def rank_for_ratio(mod: nn.Module, ratio: float) -> int:
    """Largest rank whose factors keep at most ``ratio`` of the layer's weights (>= 1)."""
    dense, per_rank = _cost(mod)
    return max(1, min(math.floor(ratio * dense / per_rank), min(linear_shape(mod)) - 1))


def check_budget(linears: dict[str, nn.Module], reduction: float) -> None:
    """One-line SpecError when even rank 1 everywhere exceeds the budget."""
    dense = sum(_cost(m)[0] for m in linears.values())
    floor = sum(_cost(m)[1] for m in linears.values())
    if floor > (1 - reduction) * dense:
        raise SpecError(f"reduction={reduction} cannot be met: rank 1 in every factorized layer already keeps "
                        f"{floor / dense:.4f} of their parameters (largest possible reduction "
                        f"{1 - floor / dense:.4f})")


def uniform(linears: dict[str, nn.Module], reduction: float) -> dict[str, int | None]:
    check_budget(linears, reduction)
    ranks: dict[str, int | None] = {}
    for name, mod in linears.items():
        dense, per_rank = _cost(mod)
        r = math.floor((1 - reduction) * dense / per_rank)
        if r < 1:
            raise SpecError(f"reduction={reduction} cannot be met for layer {name} "
                            f"({linear_shape(mod)[0]}x{linear_shape(mod)[1]}): rank would be {r}")
        ranks[name] = min(r, min(linear_shape(mod)) - 1)
    return ranks


def by_energy(linears: dict[str, nn.Module], energies: dict[str, torch.Tensor],
              reduction: float) -> dict[str, int | None]:
    """Greedy global choice of singular values by normalized energy per parameter."""
    check_budget(linears, reduction)
    budget = (1 - reduction) * sum(_cost(m)[0] for m in linears.values())
    names = list(linears)
    ranks = {n: 1 for n in names}
    spent = sum(_cost(linears[n])[1] for n in names)
    scores, owners = [], []
    for i, n in enumerate(names):
        e = energies[n].double()
        e = e / e.sum().clamp(min=1e-30)
        cap = rank_for_ratio(linears[n], 1.0 - 1e-9)  # below the break-even rank
        s = e[1:cap] / _cost(linears[n])[1]
        scores.append(s)
        owners.append(torch.full_like(s, i))
    if scores:
        s = torch.cat(scores)
        o = torch.cat(owners).long()
        for k in torch.argsort(s, descending=True).tolist():
            n = names[int(o[k])]
            c = _cost(linears[n])[1]
            if spent + c > budget:
                continue  # a cheaper (smaller) layer's value may still fit
            ranks[n] += 1  # values of one layer are sorted, so its ranks grow in order
            spent += c
    return dict(ranks)


@torch.no_grad()
def calibration_loss(model: nn.Module, batches: list[dict[str, torch.Tensor]],
                     reference: list[torch.Tensor] | None = None) -> float:
    """Next-token loss for causal LMs; MSE to ``reference`` hidden states for encoders."""
    total = 0.0
    for i, b in enumerate(batches):
        out = model(**b)
        if getattr(out, "logits", None) is not None and reference is None:
            lg = out.logits[:, :-1].float()
            tgt = b["input_ids"][:, 1:]
            total += torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), tgt.reshape(-1)).item()
        else:
            h = out.last_hidden_state.float()
            total += ((h - reference[i]) ** 2).mean().item() / reference[i].pow(2).mean().clamp(min=1e-12).item()
    return total / max(len(batches), 1)


def _batches(model: nn.Module, calibration, n: int) -> list[dict[str, torch.Tensor]]:
    dev = next(model.parameters()).device
    ids = calibration.input_ids[:n]
    return [{"input_ids": ids[i:i + 4].to(dev)} for i in range(0, ids.shape[0], 4)]


@torch.no_grad()
def by_sensitivity(model: nn.Module, linears: dict[str, nn.Module], decomps: dict, reduction: float,
                   calibration, ratios: tuple[float, ...] = RATIOS, windows: int = 32) -> dict[str, int | None]:
    """Measured per-layer loss increase at each ratio (on the first ``windows`` calibration
    windows), then a bisected loss threshold."""
    from harness.layers.lowrank import LowRankLinear

    check_budget(linears, reduction)
    batches = _batches(model, calibration, windows)
    encoder = getattr(model(**batches[0]), "logits", None) is None
    ref = [model(**b).last_hidden_state.float() for b in batches] if encoder else None
    base = calibration_loss(model, batches, ref)
    delta: dict[str, dict[float, float]] = {}
    for name, mod in linears.items():
        delta[name] = {1.0: 0.0}
        for p in ratios:
            A, B = decomps[name].factors(rank_for_ratio(mod, p))
            set_module(model, name, LowRankLinear.from_factors(A, B, getattr(mod, "bias", None)))
            delta[name][p] = calibration_loss(model, batches, ref) - base
        set_module(model, name, mod)
    budget = (1 - reduction) * sum(_cost(m)[0] for m in linears.values())

    def choose(tau: float) -> tuple[dict[str, float], float]:
        pick = {n: min([p for p, d in delta[n].items() if d <= tau], default=1.0) for n in linears}
        spent = sum(_cost(linears[n])[0] if p == 1.0 else rank_for_ratio(linears[n], p) * _cost(linears[n])[1]
                    for n, p in pick.items())
        return pick, spent

    taus = sorted({d for v in delta.values() for d in v.values()})
    lo, hi = 0, len(taus) - 1  # smallest threshold that fits (a larger one always fits)
    if choose(taus[hi])[1] > budget:
        raise SpecError(f"reduction={reduction} cannot be met with the candidate ratios {ratios}")
    while lo < hi:
        mid = (lo + hi) // 2
        if choose(taus[mid])[1] <= budget:
            hi = mid
        else:
            lo = mid + 1
    pick, _ = choose(taus[lo])
    return {n: None if p == 1.0 else rank_for_ratio(linears[n], p) for n, p in pick.items()}


__all__ = ["RATIOS", "by_energy", "by_sensitivity", "calibration_loss", "check_budget", "rank_for_ratio", "uniform"]
