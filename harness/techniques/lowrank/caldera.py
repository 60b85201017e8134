"""CALDERA (Saha et al. 2024, arXiv 2405.18886): ``W ≈ Q + L R``, all three low precision.

For each block linear, with ``H = E[x xᵀ]`` from calibration inputs, CALDERA minimises
``‖(Q + L R − W) Xᵀ‖_F² ∝ tr((Q + LR − W) H (Q + LR − W)ᵀ)`` by alternating:

1. ``Q ← LDLQ(W − L R)``: Hessian-aware quantization of the residual at ``q_bits``
   (LDLQ is GPTQ's error-feedback rounding; we reuse ``quantization.gptq.gptq_quantize``).
2. ``L, R ← LPLR(W − Q)``: rank-``rank`` regression of the residual — initialised from
   the SVD of the whitened residual (``(W − Q) C``, ``H = C Cᵀ``), then a few rounds of
   ``R ← quant(L⁺ A)``, ``L ← quant(A H Rᵀ (R H Rᵀ)⁻¹)`` with ``lr_bits`` RTN quantization.

The first ``Q`` (with ``L R = 0``) is plain LDLQ/GPTQ, so the first iterate already
beats Q-only at the same bits whenever the factors help; the best iterate by the
objective is kept. The result is a packed ``QLRLinear``. Optionally the factors are then
fine-tuned (``lora_steps``; LoRA-style, Q frozen) on the training stream (``finetune``:
``lora_steps x lora_batch`` fresh windows of the train split, seeded order) by
self-distillation towards the uncompressed model (or cross-entropy), with straight-through
fake quantization, so the stored factors stay ``lr_bits``.
Layers are processed block by block (``for_each_block``): each block's statistics see
the already-compressed earlier blocks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from harness.calibration import block_linears as _block_linears
from harness.calibration import collect_linear_stats, for_each_block, target_linears
from harness.config import check
from harness.layers.base import linear_shape, linear_weight, set_module
from harness.layers.lowrank import check_rank
from harness.layers.qlr import QLRLinear
from harness.primitives.packing import unpack
from harness.primitives.quant import QUANT_BITS, check_quant_args, dequantize_groupwise, expand_groups, quantize_to
from harness.techniques import finetune
from harness.techniques.base import Applied, Technique, from_config, register
from harness.techniques.lowrank.svd import output_error, whitening


@dataclass(frozen=True)
class CalderaConfig:
    """q_bits/q_group: backbone Q precision and group size (any size: a group that does not
    divide a layer's inputs leaves a ragged last group); rank, lr_bits, lr_group: the
    factors; q_sym: symmetric Q codes (false: a uint8 zero point per group, as in GPTQ's
    asymmetric tables; at 2 bits the 4 levels then span each group's own range);
    iters: outer alternations; lplr_iters: inner L/R rounds; damp: Hessian damping;
    lora_steps/lora_lr/lora_batch/lora_loss: optional fine-tune of L and R (0 = none) by
    self-distillation (kl) or next-token cross-entropy (ce) on the training stream.
    Defaults give ≈ 2.4 bits per parameter on harness-tiny's 256/512-wide layers."""

    q_bits: int = 2
    q_group: int | None = 128
    q_sym: bool = True
    rank: int = 8
    lr_bits: int = 4
    lr_group: int | None = None
    iters: int = 4
    lplr_iters: int = 2
    damp: float = 0.01
    init: Literal["zero", "svd", "best"] = "svd"
    lora_steps: int = 0
    lora_lr: float = 3e-4  # best of {1e-4, 3e-4, 1e-3, 3e-3} on harness-tiny (docs/results/lowrank.md)
    lora_batch: int = 4
    lora_loss: Literal["kl", "ce"] = "kl"

    def __post_init__(self) -> None:
        allowed = ", ".join(map(str, QUANT_BITS))
        check(self.q_bits in QUANT_BITS, f"q_bits={self.q_bits} is not supported; choose one of {allowed}")
        check(self.lr_bits in QUANT_BITS, f"lr_bits={self.lr_bits} is not supported; choose one of {allowed}")
        for name in ("q_group", "lr_group"):  # any positive group works (a ragged last group is fine)
            g = getattr(self, name)
            check(g is None or g >= 1, f"{name}={g} must be a positive integer or none (per output channel)")
        check(self.rank >= 1, f"rank={self.rank} must be >= 1")
        check(self.iters >= 1, f"iters={self.iters} must be >= 1")
        check(self.lplr_iters >= 1, f"lplr_iters={self.lplr_iters} must be >= 1")
        check(0 <= self.damp < 1, f"damp={self.damp} must be in [0, 1)")
        check(self.lora_steps >= 0, f"lora_steps={self.lora_steps} must be >= 0")
        check(self.lora_lr > 0, f"lora_lr={self.lora_lr} must be > 0")
        check(self.lora_batch >= 1, f"lora_batch={self.lora_batch} must be >= 1")


objective = output_error  # tr((Ŵ − W) H (Ŵ − W)ᵀ), the calibration output error per token


@dataclass
class Factors:
    """Quantized L, R (dequantized floats plus their codes/scales for packing)."""

    L: torch.Tensor
    R: torch.Tensor
    l_codes: tuple[torch.Tensor, torch.Tensor]  # codes/scales of L [out, r] (one scale per row)
    r_codes: tuple[torch.Tensor, torch.Tensor]  # codes/scales of R [r, in]


def lplr(A: torch.Tensor, H: torch.Tensor, C: torch.Tensor, rank: int, bits: int, group: int | None,
         iters: int, damp: float = 0.01) -> Factors:
    """Quantized rank-``rank`` factors minimising ``tr((L R − A) H (L R − A)ᵀ)`` (CALDERA's LPLR).

    Starts from the best unquantized fit (SVD of the whitened ``A C``); then alternates
    ``R ← LDLQ_H(L⁺ A)`` and ``L ← LDLQ_{R H Rᵀ}(A H Rᵀ (R H Rᵀ)⁻¹)``: both factors are
    rounded with error feedback under the Hessian their error is seen through, which
    keeps the error small along the dominant input directions. Best round is kept.
    """
    U, S, _ = torch.linalg.svd(A.double() @ C, full_matrices=False)
    L = (U[:, :rank] * S[:rank].sqrt()).float()
    Hf, eye = H.float(), torch.eye(rank)
    best: Factors | None = None
    best_obj = float("inf")
    for _ in range(max(1, iters)):
        R = torch.linalg.solve(L.t() @ L + 1e-8 * eye * torch.diagonal(L.t() @ L).mean().clamp(min=1e-20),
                               L.t() @ A)
        Rq, rc, rs, _ = ldlq(R, Hf, bits, group, damp)
        HL = Rq @ Hf @ Rq.t()
        L = torch.linalg.solve(HL + 1e-8 * eye * torch.diagonal(HL).mean().clamp(min=1e-20), Rq @ Hf @ A.t()).t()
        Lq, lc, ls, _ = ldlq(L, HL, bits, None, damp)
        cur = Factors(Lq, Rq, (lc, ls), (rc, rs))
        obj = objective(A, Lq @ Rq, H)
        if obj < best_obj:
            best, best_obj = cur, obj
        L = Lq
    assert best is not None
    return best


@dataclass
class CalderaResult:
    q_codes: torch.Tensor
    q_scales: torch.Tensor
    q_zeros: torch.Tensor | None
    factors: Factors
    history: list[float] = field(default_factory=list)  # objective after each outer iteration
    q_only: float = 0.0  # objective of LDLQ alone at the same q_bits (iteration 0's Q)


def ldlq(W: torch.Tensor, H: torch.Tensor, bits: int, group: int | None, damp: float, sym: bool = True
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(dequantized, codes, scales, zeros) of GPTQ/LDLQ rounding of ``W`` under ``H``
    (zeros None when symmetric)."""
    from harness.techniques.quantization.gptq import gptq_quantize

    c, s, z = gptq_quantize(W, H, bits, group, sym, damp=damp)
    return dequantize_groupwise(c, s, z, bits, group, torch.float32), c, s, z


def _alternate(W: torch.Tensor, H: torch.Tensor, C: torch.Tensor, cfg: CalderaConfig,
               f: Factors | None) -> tuple[tuple, Factors, list[float]]:
    """Alternate from factors ``f`` (None: ``L R = 0``). Each round proposes
    ``Q' = LDLQ(W − L R)`` and ``(L', R') = LPLR(W − Q')`` and moves to the better of
    ``(Q', L R)`` and ``(Q', L' R')`` only if it lowers the objective, else stops (the next
    proposal would be the same): LDLQ and quantized LPLR are not exact minimisers, and
    this rule is what makes the objective monotone."""
    LR = torch.zeros_like(W) if f is None else f.L @ f.R
    obj = objective(W, LR, H)
    q: tuple | None = None
    history: list[float] = []
    for _ in range(cfg.iters):
        cq = ldlq(W - LR, H, cfg.q_bits, cfg.q_group, cfg.damp, cfg.q_sym)
        fc = lplr(W - cq[0], H, C, cfg.rank, cfg.lr_bits, cfg.lr_group, cfg.lplr_iters, cfg.damp)
        o_new = objective(W, cq[0] + fc.L @ fc.R, H)
        o_keep = objective(W, cq[0] + LR, H) if f is not None else float("inf")
        cand, o = (fc, o_new) if o_new <= o_keep else (f, o_keep)
        if q is not None and o >= obj:
            break
        q, f, obj = cq, cand, o
        LR = f.L @ f.R
        history.append(obj)
    assert q is not None and f is not None
    return q, f, history


def decompose(W: torch.Tensor, H: torch.Tensor, cfg: CalderaConfig) -> CalderaResult:
    """CALDERA's alternating minimisation for one ``[out, in]`` weight.

    ``init="zero"`` starts from ``L R = 0`` as in the paper (first Q = plain LDLQ);
    ``"svd"`` from the quantized low-rank fit of ``W`` itself; ``"best"`` runs both and
    keeps the lower objective. ``history`` is the chosen run's objective per round.
    """
    W = W.detach().float()
    out_f, in_f = W.shape
    check_rank(cfg.rank, in_f, out_f)
    H = H.detach().float()
    C = whitening(H, cfg.damp)
    q_only = objective(W, ldlq(W, H, cfg.q_bits, cfg.q_group, cfg.damp, cfg.q_sym)[0], H)
    runs = []
    if cfg.init in ("zero", "best"):
        runs.append(_alternate(W, H, C, cfg, None))
    if cfg.init in ("svd", "best"):
        runs.append(_alternate(W, H, C, cfg, lplr(W, H, C, cfg.rank, cfg.lr_bits, cfg.lr_group,
                                                   cfg.lplr_iters, cfg.damp)))
    q, f, history = min(runs, key=lambda r: r[2][-1])
    return CalderaResult(q[1], q[2], q[3], f, history, q_only)


class _TrainQLR(nn.Module):
    """Q frozen; L and R trainable through straight-through fake quantization on their
    *stored* grids (scales fixed), so the export re-rounds onto the same codes' grid."""

    def __init__(self, layer: QLRLinear) -> None:
        super().__init__()
        self.layer = layer
        Q, L, R = layer.factors(torch.float32)
        self.register_buffer("Q", Q)
        self.L, self.R = nn.Parameter(L.clone()), nn.Parameter(R.clone())
        self.register_buffer("ls", expand_groups(layer.l_scales.float(), None, layer.rank))
        self.register_buffer("rs", expand_groups(layer.r_scales.float(), layer.lr_group, layer.in_features))

    def _codes(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        z = 2 ** (self.layer.lr_bits - 1)
        return quantize_to(x.detach(), s, torch.full_like(s, z), self.layer.lr_bits)

    def _ste(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        q = (self._codes(x, s) - 2 ** (self.layer.lr_bits - 1)) * s
        return x + (q - x).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        L, R = self._ste(self.L, self.ls), self._ste(self.R, self.rs)
        b = self.layer.bias
        y = F.linear(x, self.Q.to(x.dtype), None if b is None else b.to(x.dtype))
        return y + F.linear(F.linear(x, R.to(x.dtype)), L.to(x.dtype))

    def export(self) -> QLRLinear:
        ly = self.layer
        lc = self._codes(self.L, self.ls).to(torch.uint8)
        rc = self._codes(self.R, self.rs).to(torch.uint8)
        q = unpack(ly.q_packed, ly.q_bits, ly.in_features)  # Q is frozen: same codes and scales
        return QLRLinear.from_codes((q, ly.q_scales, ly.q_zeros), (lc, ly.l_scales), (rc, ly.r_scales), ly.bias,
                                    q_bits=ly.q_bits, q_group=ly.q_group, lr_bits=ly.lr_bits,
                                    lr_group=ly.lr_group)


@register
class Caldera(Technique):
    name = "caldera"
    config_version = 2  # v2: the LoRA fine-tune (lora_steps > 0) trains on the training stream (q_sym,
    # default true, joins the resolved key: records written before it do not match it)
    family = "lowrank"
    config_cls = CalderaConfig
    storage = "packed"
    needs_calibration = True
    needs_grad = from_config(lambda cfg: cfg.lora_steps > 0)  # the optional LoRA fine-tune of L and R
    suite_specs = ("caldera:iters=2",)
    description = "CALDERA: W ≈ Q + L R (Q 2-bit LDLQ, L/R 4-bit), calibration-weighted alternating fit"

    def apply(self, model: nn.Module, calibration=None) -> Applied:
        cfg = self.config
        linears = target_linears(model)
        for name, mod in linears.items():  # validate every layer before touching any
            out_f, in_f = linear_shape(mod)
            check_rank(cfg.rank, in_f, out_f, name)
            check_quant_args(cfg.q_bits, cfg.q_group, in_f)
            check_quant_args(cfg.lr_bits, cfg.lr_group, in_f)
        teacher = finetune.frozen_teacher(model, cfg.lora_loss) if cfg.lora_steps else None
        gains: list[float] = []

        def per_block(i: int, block: nn.Module, feed) -> None:
            with torch.no_grad():
                mods = _block_linears(block)
                stats = collect_linear_stats(mods, feed)
                for name, mod in mods.items():
                    res = decompose(linear_weight(mod), stats[name].H, cfg)
                    gains.append(min(res.history) / max(res.q_only, 1e-30))
                    new = QLRLinear.from_codes((res.q_codes, res.q_scales, res.q_zeros), res.factors.l_codes,
                                               res.factors.r_codes, getattr(mod, "bias", None),
                                               q_bits=cfg.q_bits, q_group=cfg.q_group, lr_bits=cfg.lr_bits,
                                               lr_group=cfg.lr_group)
                    set_module(block, name, new)

        for_each_block(model, calibration, per_block)
        notes = [f"mean objective vs LDLQ-only at q_bits={cfg.q_bits}: {sum(gains) / len(gains):.3f}x"]
        figures: dict[str, float] = {}
        if cfg.lora_steps:
            losses, figures = finetune.timed(lambda: self._lora(model, calibration, teacher),
                                             cfg.lora_steps * cfg.lora_batch * calibration.seq_len)
            notes.append(f"LoRA fine-tune of L,R: {cfg.lora_steps} steps on "
                         f"{finetune.describe_stream(calibration, cfg.lora_steps, cfg.lora_batch)}, "
                         f"{cfg.lora_loss} loss {finetune.loss_summary(losses)}")
        return Applied(model, notes, figures=figures)

    def _lora(self, model: nn.Module, calibration, teacher: nn.Module | None) -> list[float]:
        cfg = self.config
        wrapped = {name: _TrainQLR(mod) for name, mod in list(model.named_modules()) if isinstance(mod, QLRLinear)}
        for name, w in wrapped.items():
            set_module(model, name, w)
        params = [p for w in wrapped.values() for p in (w.L, w.R)]
        losses = finetune.finetune(model, params, calibration, steps=cfg.lora_steps, lr=cfg.lora_lr,
                                   batch=cfg.lora_batch, teacher=teacher)
        with torch.no_grad():
            for name, w in wrapped.items():
                set_module(model, name, w.export())
        return losses


__all__ = ["Caldera", "CalderaConfig", "decompose", "ldlq", "lplr", "objective"]
