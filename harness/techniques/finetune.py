"""The one fine-tune loop of the techniques (SVD-LLM's update, CALDERA's LoRA step,
cross-layer sharing, tied embeddings, pruning recovery, QAT).

Training data are the calibration windows (drawn from the *train* split by
``harness.calibration.get_calibration``; never validation or test). ``train`` runs AdamW
(no weight decay) on the given parameters only -- every other parameter is frozen for
the duration and restored afterwards -- for ``steps`` steps, each on the next batch of
a batch source, with the loss a callback computes; it returns the loss of every step.

Batch sources: ``shuffled_windows`` (a seeded random order of window batches, cycled)
and ``cycled_windows`` (the windows in order, cycled). Losses: ``distill_loss``
(``"kl"``: self-distillation towards next-token distributions captured before
compression by ``capture_targets``, which recovers what the compression lost without
overfitting a handful of windows' labels; ``"ce"``: next-token cross-entropy; encoders
without an LM head: MSE of the last hidden state to the uncompressed model's), or any
callable. ``finetune`` is the distillation recipe: shuffled windows, warm-up then linear
decay of the learning rate. Every random draw is from seeded generators, so a run
reproduces bit for bit.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

B = TypeVar("B")


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


def shuffled_windows(calibration, batch: int, seed: int = 0) -> Iterator[tuple[int, torch.Tensor]]:
    """``(first window index, input_ids [batch, seq])`` in a seeded random order of the
    window batches, repeated without end."""
    ids = calibration.input_ids
    starts = list(range(0, ids.shape[0], batch))
    order = torch.randperm(len(starts), generator=torch.Generator().manual_seed(seed))
    for step in itertools.count():
        k = starts[int(order[step % len(order)])]
        yield k, ids[k:k + batch]


def training_stream(calibration, steps: int, batch: int, seed: int = 0):
    """``steps x batch`` fresh windows (the calibration's length) of the training stream
    (``harness.models.train_data``: the train split, drawn with the calibration's tokenizer;
    the calibration windows themselves, cycled, when it carries none)."""
    from harness.models.train_data import for_technique

    return for_technique(calibration, tokens=max(1, steps) * batch * calibration.seq_len,
                         seq_len=calibration.seq_len, seed=seed)


def cycled_windows(calibration, batch: int) -> Iterator[torch.Tensor]:
    """``input_ids`` of the window batches in order, repeated without end."""
    return (b["input_ids"] for b in itertools.cycle(list(calibration.batches(batch))))


def distill_loss(model: nn.Module, targets: list[torch.Tensor] | None, batch: int, device: torch.device
                 ) -> Callable[[tuple[int, torch.Tensor]], torch.Tensor]:
    """Loss of one ``shuffled_windows`` item: KL to ``targets`` (log-probabilities), MSE to
    them (hidden states, encoders), or next-token cross-entropy when ``targets`` is None."""
    def loss(item: tuple[int, torch.Tensor]) -> torch.Tensor:
        k, x = item
        dev = device
        x = x.to(dev)
        out = model(input_ids=x)
        if targets is None:
            lg = out.logits[:, :-1].float()
            return F.cross_entropy(lg.reshape(-1, lg.shape[-1]), x[:, 1:].reshape(-1))
        if getattr(out, "logits", None) is not None:
            t = targets[k // batch].to(dev).float()
            return F.kl_div(F.log_softmax(out.logits.float(), -1), t, log_target=True,
                            reduction="batchmean") / x.shape[1]
        return F.mse_loss(out.last_hidden_state.float(), targets[k // batch].to(dev))
    return loss


def warmup_linear(steps: int) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up over the first tenth, then linear decay to 0."""
    return lambda s: min(1.0, (s + 1) / max(1, steps // 10)) * max(0.0, 1 - s / steps)


def train(model: nn.Module, params: Iterable[nn.Parameter], batches: Iterable[B],
          loss_fn: Callable[[B], torch.Tensor], *, steps: int, lr: float,
          schedule: Callable[[int], float] | None = None, train_mode: bool = True) -> list[float]:
    """AdamW on ``params`` only for ``steps`` steps, one item of ``batches`` per step;
    returns the losses. ``schedule(step)`` scales the learning rate (constant if None);
    ``train_mode`` puts the model in training mode (dropout) while it trains."""
    params = list(params)
    if steps <= 0 or not params:
        return []
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = None if schedule is None else torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    source = iter(batches)
    losses: list[float] = []
    was_training = model.training
    if train_mode:
        model.train()
    try:
        with torch.enable_grad():
            for _ in range(steps):
                loss = loss_fn(next(source))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                losses.append(float(loss.detach()))
    finally:
        for p in params:
            p.requires_grad_(False)
        for p in frozen:
            p.requires_grad_(True)
        model.train(was_training)
    return losses


def finetune(model: nn.Module, params: Iterable[nn.Parameter], calibration, *, steps: int, lr: float,
             batch: int = 4, targets: list[torch.Tensor] | None = None, seed: int = 0) -> list[float]:
    """Self-distillation (or cross-entropy, ``targets=None``) on shuffled calibration
    windows with warm-up and linear decay: the low-rank and sharing fine-tunes."""
    params = list(params)
    if steps <= 0 or not params:
        return []
    loss = distill_loss(model, targets, batch, params[0].device)
    return train(model, params, shuffled_windows(calibration, batch, seed), loss, steps=steps, lr=lr,
                 schedule=warmup_linear(steps))


def loss_summary(losses: list[float], tail: int = 10) -> str:
    """``first -> mean of the last tail losses``: one step's loss is too noisy to report alone."""
    last = losses[-tail:]
    return f"{losses[0]:.4g} -> {sum(last) / len(last):.4g}"


__all__ = ["capture_targets", "cycled_windows", "distill_loss", "finetune", "is_causal_lm", "loss_summary",
           "shuffled_windows", "train", "training_stream", "warmup_linear"]
