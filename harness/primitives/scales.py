"""Activation-aware scale searches: AWQ's per-input-channel scale and per-group clipping,
SmoothQuant's migration factors. Pure tensor math on weights and sampled inputs."""
from __future__ import annotations

import torch

from harness.primitives.quant import group_width, n_groups, pad_to_groups, rtn_fake_quant


def _out_err(Ws: list[torch.Tensor], Wq: list[torch.Tensor], x: torch.Tensor) -> float:
    return sum(float((x @ (w - q).t()).pow(2).mean()) for w, q in zip(Ws, Wq))


def search_scale(weights: list[torch.Tensor], x: torch.Tensor, x_mean: torch.Tensor, bits: int,
                 group: int | None, sym: bool, grid: int = 20) -> torch.Tensor:
    """The AWQ input-channel scale (float16-exact, [in]) for linears sharing input ``x``."""
    x = x.float()
    best, best_s = float("inf"), torch.ones_like(x_mean)
    for k in range(grid):
        a = k / grid
        s = x_mean.clamp(min=1e-4).pow(a)
        s = (s / (s.max() * s.min()).sqrt()).to(torch.float16).float()
        wq = [rtn_fake_quant(w * s, bits, group, sym) / s for w in weights]
        err = _out_err(weights, wq, x)
        if err < best:
            best, best_s = err, s
    return best_s


def search_clip(w: torch.Tensor, x: torch.Tensor, bits: int, group: int | None, sym: bool,
                ratios: tuple[float, ...] = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5)
                ) -> torch.Tensor:
    """Clip each weight group to the ratio of its range that minimises its output error.

    A ragged last group (``group`` not dividing ``in``) is searched like the others: weights
    and inputs are zero-padded to whole groups (padded inputs contribute nothing to the
    error) and the padding is dropped from the result."""
    out_f, in_f = w.shape
    g, ng = group_width(in_f, group), n_groups(in_f, group)
    wg = pad_to_groups(w, group).reshape(out_f, ng, g)
    xg = pad_to_groups(x.float(), group).reshape(-1, ng, g)  # [tokens, ng, g]
    ref = torch.einsum("tng,ong->ton", xg, wg)
    best = torch.full((out_f, ng), float("inf"), device=w.device)
    best_w = wg.clone()
    hi0, lo0 = wg.amax(-1, keepdim=True), wg.amin(-1, keepdim=True)
    for r in ratios:
        wc = torch.maximum(torch.minimum(wg, hi0 * r), lo0 * r)
        q = rtn_fake_quant(wc.reshape(out_f, ng * g)[:, :in_f], bits, group, sym)
        q = pad_to_groups(q, group).reshape(out_f, ng, g)
        err = (torch.einsum("tng,ong->ton", xg, q) - ref).pow(2).mean(0)  # [out, ng]
        better = err < best
        best = torch.where(better, err, best)
        best_w = torch.where(better.unsqueeze(-1), wc, best_w)
    return best_w.reshape(out_f, ng * g)[:, :in_f]


def smooth_scales(act_absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """SmoothQuant's per-input-channel smoothing factors (float16-exact):
    ``max|X_j|^alpha / max|W_:j|^(1-alpha)``."""
    w_absmax = torch.stack([w.detach().abs().amax(0).float() for w in weights]).amax(0)
    s = act_absmax.float().clamp(min=1e-5).pow(alpha) / w_absmax.clamp(min=1e-5).pow(1 - alpha)
    return s.clamp(min=1e-4, max=1e4).to(torch.float16).float()


__all__ = ["search_clip", "search_scale", "smooth_scales"]
