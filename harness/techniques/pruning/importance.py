"""Weight importance scores, all in [out, in] layout.

- magnitude: ``|w|`` (L1, what ``torch.nn.utils.prune.l1_unstructured`` ranks by).
- taylor: first-order Taylor estimate of the loss change from zeroing a weight,
  ``|g * w|``, averaged over calibration windows (Molchanov et al. 2017/2019) --
  the per-window absolute value matters: at a trained minimum the *mean* gradient is
  close to zero, but individual windows' gradients are not.
- obd: Optimal Brain Damage saliency ``1/2 * h_ii * w^2`` (LeCun et al. 1989) with the
  Hessian diagonal estimated by the empirical Fisher ``h_ii ~ E[g_i^2]`` over
  calibration windows (the Gauss-Newton / Fisher approximation used by WoodFisher
  and Optimal BERT Surgeon for the diagonal case).

Gradients are of the causal-LM next-token loss on the calibration windows; for that
reason taylor and obd support causal LMs only.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from harness.calibration import Calibration
from harness.layers.base import linear_weight


def to_out_in(module: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """A tensor shaped like ``module.weight`` in [out, in] layout (Conv1D stores [in, out])."""
    return t.t() if type(module).__name__ == "Conv1D" else t


def magnitude(module: nn.Module) -> torch.Tensor:
    return linear_weight(module).detach().abs().float()


def accumulate_grads(model: nn.Module, linears: dict[str, nn.Module], calib: Calibration,
                     fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *, batch_size: int = 1
                     ) -> dict[str, torch.Tensor]:
    """Mean over calibration batches of ``fn(weight, grad)`` for each linear's weight
    (both in the module's own layout), from the causal-LM loss. Other parameters'
    gradients are switched off to save memory and restored afterwards."""
    params = list(model.parameters())
    saved = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    weights = {n: m.weight for n, m in linears.items()}
    for w in weights.values():
        w.requires_grad_(True)
    acc = {n: torch.zeros_like(w, dtype=torch.float32) for n, w in weights.items()}
    dev = next(model.parameters()).device
    batches = 0
    try:
        with torch.enable_grad():
            for b in calib.batches(batch_size):
                ids = b["input_ids"].to(dev)
                mask = b.get("attention_mask")
                out = model(input_ids=ids, attention_mask=None if mask is None else mask.to(dev),
                            labels=ids, use_cache=False)
                grads = torch.autograd.grad(out.loss, list(weights.values()))
                for (n, w), g in zip(weights.items(), grads):
                    acc[n] += fn(w.detach().float(), g.float())
                batches += 1
    finally:
        for p, s in zip(params, saved):
            p.requires_grad_(s)
    return {n: to_out_in(linears[n], a / max(batches, 1)) for n, a in acc.items()}


def taylor(model: nn.Module, linears: dict[str, nn.Module], calib: Calibration) -> dict[str, torch.Tensor]:
    """First-order Taylor importance ``mean_b |g_b * w|``."""
    return accumulate_grads(model, linears, calib, lambda w, g: (g * w).abs())


def obd(model: nn.Module, linears: dict[str, nn.Module], calib: Calibration) -> dict[str, torch.Tensor]:
    """OBD saliency ``1/2 * E[g^2] * w^2`` (diagonal empirical Fisher as the Hessian)."""
    return accumulate_grads(model, linears, calib, lambda w, g: 0.5 * g.square() * w.square())
