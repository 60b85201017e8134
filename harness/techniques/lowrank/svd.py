"""Truncated SVD, ASVD and SVD-LLM: every block linear becomes a ``LowRankLinear``.

All three factor ``W T = U Σ Vᵀ`` for an input-side transform ``T`` and keep the top
``r`` triplets: ``W ≈ (U_r Σ_r^½)(Σ_r^½ V_rᵀ T⁻¹) = B A``.

- ``svd``:     ``T = I`` (minimises ``‖W - W_r‖_F``; no calibration).
- ``asvd``:    ``T = diag(s)``, ``s_j = mean|x_j|^α`` (Yuan et al. 2023, activation-aware
  scaling: input channels with large activations keep more of their weight).
  With ``search=true`` the exponent is chosen per layer from ``ALPHAS`` (0 included, i.e.
  plain SVD) by the measured output error ``tr(ΔW H ΔWᵀ)`` at the layer's target rank.
- ``svd-llm``: ``T = C``, the Cholesky factor of the calibration second moment
  ``E[x xᵀ] = C Cᵀ`` (Wang et al. 2024, truncation-aware whitening): then
  ``‖(W - W_r) Xᵀ‖_F² = Σ_{i>r} σ_i²`` exactly, so truncating the smallest singular
  values is the optimal rank-``r`` choice for the layer's *output* error.

``update_steps > 0`` adds SVD-LLM's parameter update after truncation (any of the three
methods): the ``B`` factors are fine-tuned first with ``A`` frozen, then ``A`` with ``B``
frozen (the paper's *sequential* low-rank update), by self-distillation towards the
uncompressed model on the training stream (``harness.techniques.finetune``: ``update_steps x
update_batch`` fresh windows of the train split, one seeded stream for both phases). It recovers what the
per-layer objective cannot see: errors that compound across layers.

Ranks come from ``rank_alloc`` (uniform, singular-value energy, or measured calibration
sensitivity) under a global budget: ``reduction`` is the fraction of the factorized
layers' weight parameters removed. Statistics come from one pass of the calibration data
through the original model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

import harness.techniques.lowrank.rank_alloc as rank_alloc
from harness.calibration import InputStats, collect_linear_stats, target_linears
from harness.config import check
from harness.layers.base import linear_shape, linear_weight, set_module
from harness.layers.lowrank import LowRankLinear, check_rank
from harness.techniques import finetune
from harness.techniques.base import Applied, Technique, from_config, register


@dataclass(frozen=True)
class LowRankConfig:
    """reduction: fraction of the factorized layers' weight parameters removed (0..1);
    rank: a fixed rank for every layer instead (overrides reduction);
    alloc: how the budget is split across layers (uniform | energy | sensitivity);
    sens_windows: calibration windows the sensitivity allocation measures its loss on (fewer
    are faster but noisier: on harness-tiny at 40%, 8 windows chose ranks worse than
    uniform, 32 better); update_steps/update_lr/update_batch: the sequential update."""

    reduction: float = 0.4
    rank: int | None = None
    alloc: Literal["uniform", "energy", "sensitivity"] = "uniform"
    sens_windows: int = 32
    update_steps: int = 0
    update_lr: float = 1e-4
    update_batch: int = 4

    def __post_init__(self) -> None:
        check(0 < self.reduction < 1, f"reduction={self.reduction} must be in (0, 1) "
              "(the fraction of the factorized layers' parameters removed)")
        check(self.rank is None or self.rank >= 1, f"rank={self.rank} must be >= 1")
        check(self.sens_windows >= 1, f"sens_windows={self.sens_windows} must be >= 1")
        check(self.update_steps >= 0, f"update_steps={self.update_steps} must be >= 0 (0 = no update)")
        check(self.update_lr > 0, f"update_lr={self.update_lr} must be > 0")
        check(self.update_batch >= 1, f"update_batch={self.update_batch} must be >= 1")


@dataclass(frozen=True)
class ASVDConfig(LowRankConfig):
    """alpha: exponent of the activation scaling ``s_j = mean|x_j|^alpha`` (ASVD uses 0.5);
    search: choose alpha per layer from ALPHAS by the measured output error instead."""

    alpha: float = 0.5
    search: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 <= self.alpha <= 2, f"alpha={self.alpha} must be in [0, 2]")


@dataclass(frozen=True)
class SVDLLMConfig(LowRankConfig):
    """damp: fraction of the mean diagonal added to E[x xᵀ] before its Cholesky factor."""

    damp: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 <= self.damp < 1, f"damp={self.damp} must be in [0, 1)")


class Decomposition:
    """``W T = U Σ Vᵀ`` of one layer; ``factors(r)`` gives ``(A, B)`` with ``B A ≈ W``."""

    def __init__(self, weight: torch.Tensor, transform: torch.Tensor | None = None,
                 kind: Literal["none", "diag", "chol"] = "none") -> None:
        # float64 where cheap (exactness tests, ill-conditioned whitening); float32 for big
        # layers, where a float64 SVD costs minutes on a small CPU
        dt = torch.float64 if weight.numel() <= 2 ** 20 else torch.float32
        W = weight.detach().to(dt)
        self.kind, self.T = kind, None if transform is None else transform.to(dt)
        M = W if kind == "none" else (W * self.T[None, :] if kind == "diag" else W @ self.T)
        self.U, self.S, self.Vh = torch.linalg.svd(M, full_matrices=False)
        self.dtype, self.device = weight.dtype, weight.device
        self.out_features, self.in_features = W.shape
        self.alpha: float | None = None  # ASVD's scaling exponent, when it is one

    def factors(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        root = self.S[:rank].sqrt()
        B = self.U[:, :rank] * root[None, :]
        A = root[:, None] * self.Vh[:rank]
        if self.kind == "diag":
            A = A / self.T[None, :]
        elif self.kind == "chol":  # A C^-1: solve Cᵀ Aᵀ = (Σ½Vᵀ)ᵀ
            A = torch.linalg.solve_triangular(self.T.t(), A.t(), upper=True).t()
        return A.to(self.dtype), B.to(self.dtype)

    def energy(self) -> torch.Tensor:
        """Squared singular values: the output error each one removes (exact for svd-llm)."""
        return self.S ** 2




@torch.no_grad()
def calibration_stats(model: nn.Module, linears: dict[str, nn.Module], calibration, *,
                      hessian: bool) -> dict[str, InputStats]:
    """Input statistics of every layer in ``linears`` from one pass over ``calibration``."""
    dev = next(model.parameters()).device

    def feed() -> None:
        for b in calibration.batches(8):
            model(**{k: v.to(dev) for k, v in b.items()})

    return collect_linear_stats(linears, feed, hessian=hessian)


def replace_lowrank(model: nn.Module, linears: dict[str, nn.Module], decomps: dict[str, Decomposition],
                    ranks: dict[str, int | None]) -> None:
    """Swap each layer for its rank-``r`` LowRankLinear (``None`` keeps it dense)."""
    for name, mod in linears.items():
        r = ranks.get(name)
        if r is None:
            continue
        A, B = decomps[name].factors(r)
        set_module(model, name, LowRankLinear.from_factors(A, B, getattr(mod, "bias", None)))


ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def output_error(W: torch.Tensor, What: torch.Tensor, H: torch.Tensor) -> float:
    """``tr((Ŵ − W) H (Ŵ − W)ᵀ)``: the mean squared output error ``E‖(Ŵ − W) x‖²`` per
    calibration token (ASVD's α search, CALDERA's objective)."""
    E = (What - W).detach().double()
    return float(((E @ H.double()) * E).sum())


class _LowRank(Technique):
    family = "lowrank"
    config_version = 2  # v2: the update (update_steps > 0) trains on the training stream, not calibration windows
    config_cls = LowRankConfig
    storage = "structural"
    model_kinds = ("causal-lm", "encoder")
    # Whether the decomposition reads calibration statistics (asvd, svd-llm); sensitivity
    # allocation and the sequential update measure the model on calibration data whatever
    # the method, hence ``needs_calibration`` below.
    uses_stats: bool = False
    needs_hessian = False
    needs_calibration = from_config(lambda cfg: cfg.alloc == "sensitivity" or cfg.update_steps > 0)
    needs_grad = from_config(lambda cfg: cfg.update_steps > 0)

    def decompose(self, name: str, mod: nn.Module, stats: InputStats | None, rank: int) -> Decomposition:
        """The layer's decomposition; ``rank`` is its target under uniform allocation."""
        raise NotImplementedError

    def extra_notes(self, decomps: dict[str, Decomposition]) -> list[str]:
        """Method-specific notes (after the rank notes)."""
        return []

    def apply(self, model: nn.Module, calibration=None) -> Applied:
        cfg = self.config
        linears = target_linears(model)
        if cfg.rank is not None:
            for name, mod in linears.items():
                out_f, in_f = linear_shape(mod)
                check_rank(cfg.rank, in_f, out_f, name)
            target: dict[str, int | None] = {n: cfg.rank for n in linears}
        elif cfg.alloc == "uniform":
            target = rank_alloc.uniform(linears, cfg.reduction)
        else:  # the final ranks come later; searches target the layer's uniform share
            rank_alloc.check_budget(linears, cfg.reduction)
            target = {n: rank_alloc.rank_for_ratio(m, 1 - cfg.reduction) for n, m in linears.items()}
        stats = (calibration_stats(model, linears, calibration, hessian=self.needs_hessian)
                 if self.uses_stats else {})
        teacher = finetune.frozen_teacher(model) if cfg.update_steps else None
        decomps = {n: self.decompose(n, m, stats.get(n), target[n]) for n, m in linears.items()}
        if cfg.rank is not None or cfg.alloc == "uniform":
            ranks = target
        elif cfg.alloc == "energy":
            ranks = rank_alloc.by_energy(linears, {n: d.energy() for n, d in decomps.items()}, cfg.reduction)
        else:
            ranks = rank_alloc.by_sensitivity(model, linears, decomps, cfg.reduction, calibration,
                                              windows=cfg.sens_windows)
        replace_lowrank(model, linears, decomps, ranks)
        kept = sum(r * sum(linear_shape(linears[n])) if r else linears[n].weight.numel()
                   for n, r in ranks.items())
        total = sum(m.weight.numel() for m in linears.values())
        notes = [(f"factorized {sum(r is not None for r in ranks.values())}/{len(linears)} block linears; "
                  f"kept {kept / total:.3f} of their weight parameters"),
                 "ranks: " + ",".join(str(r) for r in ranks.values()), *self.extra_notes(decomps)]
        figures: dict[str, float] = {}
        if cfg.update_steps:
            _, figures = finetune.timed(lambda: self._update(model, calibration, teacher, notes),
                                        cfg.update_steps * cfg.update_batch * calibration.seq_len)
        return Applied(model, notes, figures=figures)

    def _update(self, model: nn.Module, calibration, teacher: nn.Module | None, notes: list[str]) -> list[float]:
        """SVD-LLM's sequential update: fine-tune every ``B``, then every ``A``; its note goes
        into ``notes``, its losses are returned."""
        cfg = self.config
        layers = [m for m in model.modules() if isinstance(m, LowRankLinear)]
        first = cfg.update_steps // 2
        stream = finetune.stream_batches(calibration, cfg.update_steps, cfg.update_batch)  # B's, then A's
        kw = dict(lr=cfg.update_lr, batch=cfg.update_batch, teacher=teacher, batches=stream)
        lb = finetune.finetune(model, [m.B for m in layers], calibration, steps=first, **kw)
        la = finetune.finetune(model, [m.A for m in layers], calibration, steps=cfg.update_steps - first,
                               seed=1, **kw)
        where = finetune.describe_stream(calibration, cfg.update_steps, cfg.update_batch)
        notes.append(f"sequential update (B then A): {cfg.update_steps} steps on {where}, "
                     f"self-distillation loss {finetune.loss_summary(lb + la)}")
        return lb + la


@register
class SVD(_LowRank):
    name = "svd"
    suite_specs = ("svd:reduction=0.4",)
    description = "truncated SVD of each block linear into two thin matmuls (LowRankLinear)"

    def decompose(self, name, mod, stats, rank):
        return Decomposition(linear_weight(mod))


@register
class ASVD(_LowRank):
    name = "asvd"
    config_cls = ASVDConfig
    needs_calibration = True
    uses_stats = True
    needs_hessian = from_config(lambda cfg: cfg.search)  # the alpha search scores by output error
    suite_specs = ("asvd:reduction=0.4",)
    description = "activation-aware SVD: scale input channels by mean|x|^alpha before truncating"

    def extra_notes(self, decomps):
        if not self.config.search:
            return []
        alphas = [d.alpha for d in decomps.values()]
        counts = {a: alphas.count(a) for a in ALPHAS if a in alphas}
        return ["alpha per layer (searched by output error): " + ", ".join(f"{a:g} x{c}" for a, c in counts.items())]

    def decompose(self, name, mod, stats, rank):
        W = linear_weight(mod)
        if not self.config.search:
            return self._scaled(W, stats, self.config.alpha)
        best: tuple[float, Decomposition] | None = None
        for alpha in ALPHAS:
            dec = self._scaled(W, stats, alpha)
            A, B = dec.factors(rank)
            err = output_error(W, B @ A, stats.H)
            if best is None or err < best[0]:
                best = (err, dec)
        assert best is not None
        return best[1]

    @staticmethod
    def _scaled(W: torch.Tensor, stats: InputStats, alpha: float) -> Decomposition:
        s = stats.abs_mean.clamp(min=1e-6) ** alpha
        dec = Decomposition(W, s / s.mean(), kind="diag")
        dec.alpha = alpha
        return dec


@register
class SVDLLM(_LowRank):
    name = "svd-llm"
    config_cls = SVDLLMConfig
    needs_calibration = True
    uses_stats = True
    needs_hessian = True
    suite_specs = ("svd-llm:reduction=0.4",)
    description = "SVD-LLM: truncation-aware whitening by the Cholesky factor of E[x x^T]"

    def decompose(self, name, mod, stats, rank):
        return Decomposition(linear_weight(mod), whitening(stats.H, self.config.damp), kind="chol")


def whitening(H: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """Lower Cholesky factor ``C`` of the damped second moment (``H + λI = C Cᵀ``)."""
    H = H.double()
    diag = torch.diagonal(H)
    lam = damp * diag.mean().clamp(min=1e-12)
    dead = diag <= 0
    H = H.clone()
    H[dead, dead] = 1.0
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    for _ in range(6):  # grow the damping until the factorization succeeds
        C, info = torch.linalg.cholesky_ex(H + lam * eye)
        if int(info) == 0:
            return C
        lam = lam * 10 if lam > 0 else 1e-8 * diag.mean().clamp(min=1e-12)
    raise ValueError("calibration second moment is not positive definite even after damping")


__all__ = [
    "ASVD",
    "SVD",
    "SVDLLM",
    "ALPHAS",
    "Decomposition",
    "LowRankConfig",
    "calibration_stats",
    "output_error",
    "replace_lowrank",
    "whitening",
]
