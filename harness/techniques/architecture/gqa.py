"""Grouped-query attention conversion (``gqa:kv_heads=K``), after Ainslie et al., "GQA:
Training Generalized Multi-Query Transformer Models from Multi-Head Checkpoints".

Each new KV head is the mean of the K/V projections of the old KV heads it replaces
(query head h keeps reading KV head ``h // (query heads / K)``, so the groups line up with
the heads the model already shares). The K/V projections really shrink and the config's
``num_key_value_heads`` is rewritten, so the KV cache holds ``old / K`` times fewer bytes
per token and the saved model reloads with transformers alone. ``steps=N`` uptrains the
whole model for N AdamW steps on the training stream (``harness.models.train_data``):
self-distillation towards the model before conversion (``loss=kd``, default) or
next-token cross-entropy (``loss=ce``, the paper's pre-training objective).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from harness.calibration import find_blocks
from harness.config import SpecError, check
from harness.models.train_data import for_technique
from harness.techniques.base import Applied, Technique, from_config, register
from harness.techniques.finetune import cycled_windows, loss_summary, train, train_figures, warmup_linear
from harness.techniques.structure import LLAMA_LIKE

GQA_FAMILIES = sorted(LLAMA_LIKE)


@dataclass(frozen=True)
class GQAConfig:
    """kv_heads: KV heads after conversion (0: half the current count); steps: uptraining
    steps (0: none); lr, batch, seq_len: uptraining optimizer and windows; loss: kd or ce;
    data: training source (train, a text file or an HF dataset directory); seed."""

    kv_heads: int = 0
    steps: int = 0
    lr: float = 3e-4
    batch: int = 8
    seq_len: int = 128
    loss: Literal["kd", "ce"] = "kd"
    data: str = "train"
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.kv_heads >= 0, f"kv_heads={self.kv_heads} must be >= 1 (or 0: half the current count)")
        check(self.steps >= 0, f"steps={self.steps} must be >= 0")
        check(0 < self.lr < 1, f"lr={self.lr} is outside (0, 1)")
        check(self.batch >= 1, f"batch={self.batch} must be >= 1")
        check(self.seq_len >= 2, f"seq_len={self.seq_len} must be >= 2")


def target_kv_heads(n_q: int, n_kv: int, want: int) -> int:
    """The validated KV head count: a divisor of the current KV heads (hence of the query
    heads), below the current count."""
    k = want or n_kv // 2
    allowed = [d for d in range(1, n_kv) if n_kv % d == 0]
    if not allowed:
        raise SpecError(f"the model already has {n_kv} KV head; nothing to group")
    if n_q % max(k, 1) or k not in allowed:
        why = (f"does not divide the {n_q} query heads" if k < 1 or n_q % k else
               f"is not a divisor of the current {n_kv} KV heads below it")
        raise SpecError(f"kv_heads={want} {why}; allowed: {', '.join(map(str, allowed))}")
    return k


@torch.no_grad()
def mean_pool_kv(model: nn.Module, k: int) -> tuple[int, int]:
    """Convert every block to ``k`` KV heads in place; returns (old KV heads, query heads)."""
    cfg = model.config
    if getattr(cfg, "model_type", None) not in LLAMA_LIKE or not hasattr(cfg, "num_key_value_heads"):
        raise SpecError(f"gqa does not apply to {getattr(cfg, 'model_type', type(model).__name__)} models; "
                        f"it converts the attention of {', '.join(GQA_FAMILIES)}")
    n_q, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    k = target_kv_heads(n_q, n_kv, k)
    r = n_kv // k
    for block in find_blocks(model)[1]:
        att = block.self_attn
        hd = int(att.head_dim)
        for name in ("k_proj", "v_proj"):
            old = getattr(att, name)
            w = old.weight.view(k, r, hd, -1).mean(1).reshape(k * hd, -1)
            new = nn.Linear(w.shape[1], w.shape[0], bias=old.bias is not None, device=w.device, dtype=w.dtype)
            new.weight.copy_(w)
            if old.bias is not None:
                new.bias.copy_(old.bias.view(k, r, hd).mean(1).reshape(-1))
            setattr(att, name, new)
        att.num_key_value_groups = n_q // k
    cfg.num_key_value_heads = k
    return n_kv, n_q


def uptrain(model: nn.Module, teacher: nn.Module | None, calibration, cfg: GQAConfig) -> tuple[list[float], float, int]:
    """Fine-tune every parameter for ``cfg.steps``; (losses, wall s, tokens seen)."""
    data = for_technique(calibration, tokens=cfg.steps * cfg.batch * cfg.seq_len, seq_len=cfg.seq_len,
                         seed=cfg.seed, source=cfg.data)
    dev = next(model.parameters()).device

    def loss(ids: torch.Tensor) -> torch.Tensor:
        ids = ids.to(dev)
        out = model(input_ids=ids, use_cache=False).logits.float()
        if teacher is None:
            return F.cross_entropy(out[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        with torch.no_grad():
            t = F.log_softmax(teacher(input_ids=ids, use_cache=False).logits.float(), -1)
        return F.kl_div(F.log_softmax(out, -1).flatten(0, 1), t.flatten(0, 1), log_target=True,
                        reduction="batchmean")

    t0 = time.perf_counter()
    losses = train(model, list(model.parameters()), cycled_windows(data, cfg.batch), loss, steps=cfg.steps,
                   lr=cfg.lr, schedule=warmup_linear(cfg.steps), train_mode=False, seed=cfg.seed)
    return losses, time.perf_counter() - t0, cfg.steps * cfg.batch * data.seq_len


@register
class GQA(Technique):
    name = "gqa"
    family = "architecture"
    config_cls = GQAConfig
    storage = "structural"
    needs_calibration = from_config(lambda cfg: cfg.steps > 0)  # the training stream rides on it
    needs_grad = from_config(lambda cfg: cfg.steps > 0)
    model_kinds = ("causal-lm",)
    suite_specs = ("gqa", "gqa:steps=80")  # kv_heads=0: half the KV heads of any model; 80 steps: < 30 s on 2 cores
    description = "MHA/GQA -> fewer KV heads by mean-pooling K/V per group; optional uptraining"

    def apply(self, model: nn.Module, calibration=None) -> Applied:
        cfg = self.config
        teacher = copy.deepcopy(model).eval() if cfg.steps and cfg.loss == "kd" else None
        n_kv, n_q = mean_pool_kv(model, cfg.kv_heads)
        k = model.config.num_key_value_heads
        notes = [f"KV heads {n_kv} -> {k} per block ({n_q} query heads, K/V projections mean-pooled per group); "
                 f"KV cache {n_kv / k:g}x smaller per token"]
        figures: dict[str, float] = {}
        if cfg.steps:
            losses, wall, tokens = uptrain(model, teacher, calibration, cfg)
            figures = train_figures(losses, wall, tokens)
            notes.append(f"uptrained {cfg.steps} steps ({cfg.loss}, {tokens} tokens): loss {loss_summary(losses)}")
        return Applied(model, notes, figures=figures)


__all__ = ["GQA", "GQAConfig", "mean_pool_kv", "target_kv_heads", "train_figures", "uptrain"]
