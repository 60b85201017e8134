"""Quantization-aware training: fake quantization with a straight-through estimator, a
short fine-tune, then export to the packed QuantLinear format.

Each block linear is wrapped in ``FakeQuantLinear``: the forward uses
``w_hat = (clamp(round_ste(w / s) + z, 0, 2**b - 1) - z) * s`` where ``round_ste`` rounds
in the forward and passes gradients straight through. Both the weights and the
per-group scales ``s`` (``[out, ceil(in / group)]``, a ragged last group included;
initialised by RTN, LSQ-style learnable, rounded to float16 in
the forward exactly as stored) are trained with AdamW on the causal-LM loss of the
training stream (``finetune.training_stream``: steps x batch fresh windows of the
*train* split, drawn with the calibration's tokenizer; a calibration without one is
cycled). The default loss is distillation from the unquantized model (a frozen
copy, so QAT needs twice the model memory); ``loss=ce`` uses the windows' next tokens.
Zeros stay at their RTN values. Export quantizes with the learned
scales, so the packed model computes exactly what was trained. Only the quantized
weights and their scales train; embeddings, norms and the head stay frozen.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from harness.calibration import target_linears
from harness.config import check
from harness.layers.base import linear_weight
from harness.primitives.quant import expand_groups, group_width, n_groups, pad_to_groups, qparams
from harness.techniques.base import Applied, Technique, register
from harness.techniques.finetune import cycled_windows, timed, train, training_stream
from harness.techniques.quantization.common import (
    WeightQuantConfig,
    calibration_notes,
    check_config,
    replace,
    to_quant_linear,
)


@dataclass(frozen=True)
class QATConfig(WeightQuantConfig):
    """QAT options on top of bits/group/sym: steps, lr (AdamW), batch (windows per step),
    loss: ``kd`` (KL to the unquantized model's next-token distribution: the fine-tune
    recovers the original function instead of overfitting the few calibration windows)
    or ``ce`` (plain next-token cross-entropy on the windows)."""

    steps: int = 200
    lr: float = 1e-4
    batch: int = 8
    loss: Literal["kd", "ce"] = "kd"

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.steps >= 0, f"steps={self.steps} must be >= 0")
        check(self.lr > 0, f"lr={self.lr} must be > 0")
        check(self.batch >= 1, f"batch={self.batch} must be >= 1")


def _ste(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Forward ``y``, backward as if identity from ``x``."""
    return x + (y - x).detach()


class FakeQuantLinear(nn.Module):
    """Trainable stand-in for a block linear during QAT (not saved: it is exported)."""

    def __init__(self, src: nn.Module, bits: int, group: int | None, sym: bool) -> None:
        super().__init__()
        w = linear_weight(src).detach().float()
        out_f, in_f = w.shape
        self.bits, self.group, self.sym, self.in_features = bits, group, sym, in_f
        g, ng = group_width(in_f, group), n_groups(in_f, group)
        # RTN init; a ragged last group is zero-padded, which leaves its scale/zero unchanged
        s, z = qparams(pad_to_groups(w, group).reshape(-1, g), bits, sym)
        self.weight = nn.Parameter(w.clone())
        self.scale = nn.Parameter(s.reshape(out_f, ng))  # [out, ceil(in / group)]
        self.register_buffer("zero", z.reshape(out_f, ng))
        b = getattr(src, "bias", None)
        self.bias = None if b is None else nn.Parameter(b.detach().clone(), requires_grad=False)
        self.src = [src]  # kept out of the module tree

    def fake_weight(self) -> torch.Tensor:
        s = _ste(self.scale, self.scale.detach().clamp(min=1e-6).half().float())
        S = expand_groups(s, self.group, self.in_features)
        Z = expand_groups(self.zero, self.group, self.in_features)
        q = torch.clamp(_ste(self.weight / S, torch.round(self.weight / S)) + Z, 0, 2 ** self.bits - 1)
        return (q - Z) * S

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.fake_weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    @torch.no_grad()
    def export(self) -> nn.Module:
        """The packed QuantLinear computing exactly ``fake_weight()``."""
        s = self.scale.clamp(min=1e-6).half().float()
        S = expand_groups(s, self.group, self.in_features)
        Z = expand_groups(self.zero, self.group, self.in_features)
        codes = torch.clamp(torch.round(self.weight / S) + Z, 0, 2 ** self.bits - 1).to(torch.uint8)
        zeros = None if self.sym else self.zero.to(torch.uint8)
        return to_quant_linear(self.src[0], self.weight.detach(), bits=self.bits, group=self.group, sym=self.sym,
                               codes=(codes, s.half(), zeros))


def qat_finetune(model: nn.Module, calibration, cfg: QATConfig) -> list[float]:
    """Wrap, fine-tune and export in place; returns the per-step training loss."""
    linears = target_linears(model)
    check_config(linears, cfg.bits, cfg.group)
    saved = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    teacher = copy.deepcopy(model).eval() if cfg.loss == "kd" else None
    fq = {n: FakeQuantLinear(m, cfg.bits, cfg.group, cfg.sym) for n, m in linears.items()}
    for n, m in fq.items():
        replace(model, n, m)
    params = [p for m in fq.values() for p in (m.weight, m.scale)]
    dev = params[0].device

    def loss(ids: torch.Tensor) -> torch.Tensor:
        ids = ids.to(dev)
        if teacher is None:
            return model(input_ids=ids, labels=ids, use_cache=False).loss
        with torch.no_grad():
            t = F.log_softmax(teacher(input_ids=ids, use_cache=False).logits.float(), -1)
        st = F.log_softmax(model(input_ids=ids, use_cache=False).logits.float(), -1)
        return F.kl_div(st.flatten(0, 1), t.flatten(0, 1), log_target=True, reduction="batchmean")

    try:
        return train(model, params, cycled_windows(training_stream(calibration, cfg.steps, cfg.batch), cfg.batch), loss,
                     steps=cfg.steps, lr=cfg.lr)
    finally:
        teacher = None
        for n, m in fq.items():
            replace(model, n, m.export())
        for p, flag in saved:
            p.requires_grad_(flag)


@register
class QAT(Technique):
    name = "qat"
    config_version = 2  # v2: trains on the training stream (train split), not the calibration windows
    family = "quantization"
    config_cls = QATConfig
    storage = "packed"
    needs_calibration = True
    needs_grad = True
    model_kinds = ("causal-lm",)
    suite_specs = ("qat:bits=2,group=64,steps=10,batch=4", "qat:bits=3,group=64,steps=10,batch=4")
    description = "QAT: fake-quant + STE (learnable scales) fine-tune on train windows, exported packed"

    def apply(self, model: nn.Module, calibration=None) -> Applied:
        cfg = self.config
        ls, figures = timed(lambda: qat_finetune(model, calibration, cfg), cfg.steps * cfg.batch * calibration.seq_len)
        extra = ([f"QAT fine-tune {len(ls)} steps on the training stream: loss {ls[0]:.3f} -> {ls[-1]:.3f}"]
                 if ls else [])
        return Applied(model, calibration_notes(calibration) + extra, figures=figures)
