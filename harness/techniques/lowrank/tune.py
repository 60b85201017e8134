"""A short fine-tune loop shared by CALDERA's LoRA step and cross-layer sharing.

Training data are the calibration windows (drawn from the *train* split by
``harness.calibration.get_calibration``; never validation or test). The loss is either
``"kl"``: self-distillation, KL(uncompressed ‖ compressed) of the next-token
distributions captured before compression (``capture_targets``; recovers what the
compression lost without overfitting a handful of windows' labels), or ``"ce"``:
next-token cross-entropy on the windows. Encoders (no LM head) always use the MSE of
their last hidden state to the uncompressed model's.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn


def is_causal_lm(model: nn.Module) -> bool:
    return type(model).__name__.endswith(("ForCausalLM", "LMHeadModel"))


@torch.no_grad()
def capture_targets(model: nn.Module, calibration, batch: int = 4, loss: str = "kl") -> list[torch.Tensor] | None:
    """Reference outputs of the uncompressed model per batch: float16 log-probabilities
    (causal LM, ``loss="kl"``), last hidden states (encoders), or None (``loss="ce"``)."""
    causal = is_causal_lm(model)
    if causal and loss == "ce":
        return None
    dev = next(model.parameters()).device
    out = []
    for i in range(0, calibration.n, batch):
        o = model(input_ids=calibration.input_ids[i:i + batch].to(dev))
        out.append(F.log_softmax(o.logits.float(), -1).half() if causal else o.last_hidden_state.detach().float())
    return out


def finetune(model: nn.Module, params: Iterable[nn.Parameter], calibration, *, steps: int, lr: float,
             batch: int = 4, targets: list[torch.Tensor] | None = None, seed: int = 0) -> list[float]:
    """AdamW on ``params`` only (everything else frozen) for ``steps`` steps; returns the losses."""
    params = list(params)
    if steps <= 0 or not params:
        return []
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    dev = next(iter(params)).device
    ids = calibration.input_ids
    starts = list(range(0, ids.shape[0], batch))
    order = torch.randperm(len(starts), generator=torch.Generator().manual_seed(seed))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, steps // 10)) *
                                              max(0.0, 1 - s / steps))
    losses: list[float] = []
    was_training = model.training
    model.train()
    try:
        with torch.enable_grad():
            for step in range(steps):
                k = starts[int(order[step % len(order)])]
                x = ids[k:k + batch].to(dev)
                out = model(input_ids=x)
                if targets is None:
                    lg = out.logits[:, :-1].float()
                    loss = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), x[:, 1:].reshape(-1))
                elif getattr(out, "logits", None) is not None:
                    t = targets[k // batch].to(dev).float()
                    loss = F.kl_div(F.log_softmax(out.logits.float(), -1), t, log_target=True,
                                    reduction="batchmean") / x.shape[1]
                else:
                    loss = F.mse_loss(out.last_hidden_state.float(), targets[k // batch].to(dev))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(loss.item())
    finally:
        for p in params:
            p.requires_grad_(False)
        for p in frozen:
            p.requires_grad_(True)
        model.train(was_training)
    return losses


def loss_summary(losses: list[float], tail: int = 10) -> str:
    """``first -> mean of the last tail losses``: one step's loss is too noisy to report alone."""
    last = losses[-tail:]
    return f"{losses[0]:.4g} -> {sum(last) / len(last):.4g}"


__all__ = ["capture_targets", "finetune", "is_causal_lm", "loss_summary"]
