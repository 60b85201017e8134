"""Recovery: a short fine-tune after pruning, usable as a pipeline stage (``recover``).

Trains on the training stream (``finetune.training_stream``: steps x batch fresh windows of
the *train* split, drawn with the calibration's tokenizer) with the causal-LM loss,
for ``steps`` AdamW steps, and keeps every pruned weight at zero so the sparsity pattern
(and a packed ``SparseLinear``'s storage) survives:

- ``mode=lora``: a rank-``rank`` adapter ``B A`` (B starts at zero) beside each linear in
  the transformer blocks; only the adapters train; at the end ``W <- (W + s B A) * mask``
  is merged in, so no adapter is left in the model.
- ``mode=full``: the block linears' weights train directly; their gradients are
  multiplied by the keep mask (and AdamW without weight decay never moves a weight
  whose gradient is always zero).

Structurally pruned models have no zeros to protect; the stage just fine-tunes them.
Storage is unchanged by this stage ("dense": same bytes as its input).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from harness.calibration import target_linears
from harness.config import check
from harness.layers.base import linear_weight, set_module
from harness.layers.sparse import SparseLinear
from harness.techniques.base import Applied, Technique, register
from harness.techniques.finetune import cycled_windows, timed, train, training_stream


@dataclass(frozen=True)
class RecoveryConfig:
    """steps: optimizer steps; lr: AdamW learning rate; mode: lora or full;
    rank/alpha: LoRA size and scale (alpha/rank); batch: windows per step."""

    steps: int = 50
    lr: float = 1e-3
    mode: Literal["lora", "full"] = "lora"
    rank: int = 8
    alpha: float = 16.0
    batch: int = 4

    def __post_init__(self) -> None:
        check(self.steps >= 1, f"steps={self.steps} must be >= 1")
        check(0 < self.lr < 1, f"lr={self.lr} is outside (0, 1)")
        check(self.rank >= 1, f"rank={self.rank} must be >= 1")
        check(self.batch >= 1, f"batch={self.batch} must be >= 1")


class _Trainable(nn.Module):
    """A dense, trainable stand-in for one block linear during recovery."""

    def __init__(self, src: nn.Module, cfg: RecoveryConfig) -> None:
        super().__init__()
        w = (src.dense_weight() if isinstance(src, SparseLinear) else linear_weight(src)).detach()
        self.src = src
        self.register_buffer("keep", w != 0)
        self.weight = nn.Parameter(w.float().clone(), requires_grad=cfg.mode == "full")
        b = getattr(src, "bias", None)
        self.register_buffer("bias", None if b is None else b.detach().float().clone())
        self.lora = cfg.mode == "lora"
        if self.lora:
            out_f, in_f = w.shape
            g = torch.Generator().manual_seed(out_f * 31 + in_f)
            self.A = nn.Parameter((torch.randn(cfg.rank, in_f, generator=g) / in_f ** 0.5).to(w.device))
            self.B = nn.Parameter(torch.zeros(out_f, cfg.rank, device=w.device))
            self.scale = cfg.alpha / cfg.rank
        else:
            self.weight.register_hook(lambda grad: grad * self.keep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.linear(x.float(), self.weight, self.bias)
        if self.lora:
            y = y + (x.float() @ self.A.t() @ self.B.t()) * self.scale
        return y.to(x.dtype)

    @torch.no_grad()
    def merged(self) -> nn.Module:
        """The original module type holding the fine-tuned weight, zeros kept."""
        w = self.weight + (self.B @ self.A) * self.scale if self.lora else self.weight
        w = (w * self.keep).to(self.src.values.dtype if isinstance(self.src, SparseLinear)
                               else linear_weight(self.src).dtype)
        if isinstance(self.src, SparseLinear):
            return SparseLinear.from_dense(w, self.src.bias, mask=self.src.keep_mask(), format=self.src.format)
        linear_weight(self.src).copy_(w)
        return self.src


def recover(model: nn.Module, calibration, cfg: RecoveryConfig) -> list[float]:
    """Fine-tune ``model`` in place; returns the loss of every step."""
    targets = target_linears(model, also=(SparseLinear,))  # packed sparse layers train too
    saved = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    wrappers = {n: _Trainable(m, cfg) for n, m in targets.items()}
    for n, w in wrappers.items():
        set_module(model, n, w)
    params = [p for w in wrappers.values() for p in w.parameters() if p.requires_grad]
    dev = next(iter(params)).device

    def loss(ids: torch.Tensor) -> torch.Tensor:
        ids = ids.to(dev)
        return model(input_ids=ids, labels=ids, use_cache=False).loss

    try:  # in the model's current mode, as pruning leaves it (eval: no dropout)
        return train(model, params, cycled_windows(training_stream(calibration, cfg.steps, cfg.batch), cfg.batch), loss,
                     steps=cfg.steps, lr=cfg.lr, train_mode=False)
    finally:
        for n, w in wrappers.items():
            set_module(model, n, w.merged())
        for p, flag in saved:
            p.requires_grad_(flag)


@register
class Recover(Technique):
    name = "recover"
    config_version = 2  # v2: trains on the training stream (train split), not the calibration windows
    family = "pruning"
    config_cls = RecoveryConfig
    storage = "dense"
    needs_calibration = True
    needs_grad = True
    model_kinds = ("causal-lm",)
    description = "short LoRA or full fine-tune after pruning; keeps pruned weights at zero"

    def apply(self, model: nn.Module, calibration=None) -> Applied:
        cfg = self.config
        ls, figures = timed(lambda: recover(model, calibration, cfg), cfg.steps * cfg.batch * calibration.seq_len)
        return Applied(model, [f"recovery fine-tune ({cfg.mode}, {len(ls)} steps): train loss "
                               f"{ls[0]:.3f} -> {ls[-1]:.3f}" if ls else "recovery fine-tune"], figures=figures)
