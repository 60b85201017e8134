"""The one fine-tune loop of the techniques (SVD-LLM's update, CALDERA's LoRA step,
cross-layer sharing, tied embeddings, pruning recovery, QAT, distillation, GQA uptraining).

Training data are the training stream (``harness.models.train_data``): ``steps x batch``
fresh windows of the bundled *train* split (never validation or test), drawn with the
calibration's tokenizer in a seeded order, so the token budget is ``steps x batch x
seq_len`` and a run reproduces bit for bit. A calibration built by hand (no tokenizer)
falls back to its own windows, cycled, and ``describe_stream`` says so.

``train`` runs AdamW (no weight decay) on the given parameters only -- every other
parameter is frozen for the duration and restored afterwards -- for ``steps`` steps, each
on the next batch of a batch source, with the loss a callback computes; it returns the
loss of every step. It seeds torch's generator (``seed``) inside a forked RNG state, so
dropout masks are the same on every run and the caller's random state is left alone.

``finetune`` is the self-distillation recipe of the low-rank and sharing fine-tunes:
the stream, warm-up then linear decay of the learning rate, and the loss of
``self_distill_loss``: KL to the next-token distributions of ``frozen_teacher`` (a copy of
the model taken before compression, run on each batch), which recovers what the
compression lost instead of fitting the windows' labels; ``loss="ce"`` (no teacher):
next-token cross-entropy; encoders without an LM head: MSE of the last hidden state to
the teacher's.
"""
from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

B = TypeVar("B")


def is_causal_lm(model: nn.Module) -> bool:
    return type(model).__name__.endswith(("ForCausalLM", "LMHeadModel"))


def frozen_teacher(model: nn.Module, loss: str = "kl") -> nn.Module | None:
    """A frozen eval-mode copy of ``model``, taken before it is compressed: the teacher of
    the self-distillation fine-tunes, run on every training batch. Targets captured in
    advance would hold ``steps x batch x seq_len x vocab`` numbers for a stream of fresh
    windows; the copy costs one model's memory (as QAT's and GQA's teachers do). None for
    ``loss="ce"`` on a causal LM (the windows' own next tokens are the targets)."""
    if is_causal_lm(model) and loss == "ce":
        return None
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


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


def stream_batches(calibration, steps: int, batch: int, seed: int = 0) -> Iterator[torch.Tensor]:
    """The training stream's ``input_ids`` batches in their training order: ``steps``
    batches of fresh windows (one stream may feed several ``finetune`` calls in turn)."""
    return cycled_windows(training_stream(calibration, steps, batch, seed), batch)


def describe_stream(calibration, steps: int, batch: int, seed: int = 0) -> str:
    """Where the fine-tune's tokens came from, for the notes: budget, source, epochs."""
    d = training_stream(calibration, steps, batch, seed).describe()
    return (f"{d['train_tokens']} tokens of {d['train_source']} ({d['train_epochs']} epochs of its "
            f"{d['train_source_tokens']} tokens, seed {seed})")


def self_distill_loss(model: nn.Module, teacher: nn.Module | None, device: torch.device
                      ) -> Callable[[torch.Tensor], torch.Tensor]:
    """Loss of one batch of ``input_ids``: KL to the teacher's next-token distributions
    (per token), MSE to its last hidden state (encoders), or next-token cross-entropy
    when ``teacher`` is None."""
    causal = is_causal_lm(model)
    kw = {"use_cache": False} if causal else {}

    def loss(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device)
        out = model(input_ids=x, **kw)
        if teacher is None:
            lg = out.logits[:, :-1].float()
            return F.cross_entropy(lg.reshape(-1, lg.shape[-1]), x[:, 1:].reshape(-1))
        with torch.no_grad():
            ref = teacher(input_ids=x, **kw)
        if causal:
            t = F.log_softmax(ref.logits.float(), -1)
            return F.kl_div(F.log_softmax(out.logits.float(), -1), t, log_target=True,
                            reduction="batchmean") / x.shape[1]
        return F.mse_loss(out.last_hidden_state.float(), ref.last_hidden_state.float())
    return loss


def warmup_linear(steps: int) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up over the first tenth, then linear decay to 0."""
    return lambda s: min(1.0, (s + 1) / max(1, steps // 10)) * max(0.0, 1 - s / steps)


def _cuda_devices(params: list[nn.Parameter]) -> list[int]:
    return sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})


def train(model: nn.Module, params: Iterable[nn.Parameter], batches: Iterable[B],
          loss_fn: Callable[[B], torch.Tensor], *, steps: int, lr: float,
          schedule: Callable[[int], float] | None = None, train_mode: bool = True, seed: int = 0) -> list[float]:
    """AdamW on ``params`` only for ``steps`` steps, one item of ``batches`` per step;
    returns the losses. ``schedule(step)`` scales the learning rate (constant if None);
    ``train_mode`` puts the model in training mode (dropout) while it trains; ``seed``
    seeds torch's generator for the run (dropout masks), in a forked RNG state."""
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
    devices = _cuda_devices(params)
    try:
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            torch.manual_seed(seed)
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
             batch: int = 4, teacher: nn.Module | None = None, seed: int = 0,
             batches: Iterator[torch.Tensor] | None = None) -> list[float]:
    """Self-distillation towards ``teacher`` (``frozen_teacher``; cross-entropy when None)
    on the training stream (``steps x batch`` fresh windows drawn with ``calibration``'s
    tokenizer, or the next ``steps`` items of ``batches``) with warm-up and linear decay:
    the low-rank and sharing fine-tunes."""
    params = list(params)
    if steps <= 0 or not params:
        return []
    loss = self_distill_loss(model, teacher, params[0].device)
    source = batches if batches is not None else stream_batches(calibration, steps, batch, seed)
    return train(model, params, source, loss, steps=steps, lr=lr, schedule=warmup_linear(steps), seed=seed)


def loss_summary(losses: list[float], tail: int = 10) -> str:
    """``first -> mean of the last tail losses``: one step's loss is too noisy to report alone."""
    last = losses[-tail:]
    return f"{losses[0]:.4g} -> {sum(last) / len(last):.4g}"


def train_figures(losses: list[float], wall_s: float, tokens: int) -> dict[str, float]:
    """The ``train.*`` figures of a training run (``harness.metrics``)."""
    last = losses[-10:]
    return {"train.steps": float(len(losses)), "train.tokens": float(tokens), "train.wall_s": wall_s,
            "train.loss_first": losses[0], "train.loss_last": sum(last) / len(last)}


def timed(run: Callable[[], list[float]], tokens: int) -> tuple[list[float], dict[str, float]]:
    """Run a training call: (its losses, its ``train.*`` figures; none if it took no step).
    ``tokens``: the stream's budget, ``steps x batch x seq_len``."""
    t0 = time.perf_counter()
    losses = run()
    return losses, (train_figures(losses, time.perf_counter() - t0, tokens) if losses else {})


__all__ = ["cycled_windows", "describe_stream", "finetune", "frozen_teacher", "is_causal_lm", "loss_summary",
           "self_distill_loss", "stream_batches", "timed", "train", "train_figures", "training_stream",
           "warmup_linear"]
