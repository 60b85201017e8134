"""GPTQ (Frantar et al. 2023): second-order weight quantization with error feedback.

For each linear, with ``H = E[x x^T]`` from calibration inputs (damped by ``damp`` times
the mean diagonal), columns are quantized one at a time; each column's rounding error,
scaled by the Cholesky factor of ``H^-1``, is pushed onto the not-yet-quantized columns
(lazy updates inside blocks of ``blocksize`` columns, one matmul per block for the rest).
``act_order`` processes columns by decreasing ``diag(H)``; group parameters are then
computed up front from the original weight ("static groups") so groups stay contiguous
in the stored layout. A group size that does not divide ``in`` leaves a ragged last group
(``ceil(in / group)`` groups; the last one's parameters come from its remaining columns
only, as in ``uniform``). Layers are processed block by block and, inside a block, input
group by input group (``sequential.quantize_sequential``), so peak memory is one block's
activations. The result is the same packed QuantLinear as RTN.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from harness.calibration import InputStats, target_linears
from harness.config import check
from harness.layers.base import linear_weight
from harness.primitives.quant import check_quant_args, group_width, n_groups, qparams
from harness.techniques.base import Applied, Technique, register
from harness.techniques.quantization.common import (
    WeightQuantConfig,
    calibration_notes,
    check_config,
    head_notes,
    to_quant_linear,
)
from harness.techniques.quantization.sequential import quantize_head, quantize_sequential


@dataclass(frozen=True)
class GPTQConfig(WeightQuantConfig):
    """GPTQ options on top of bits/group/sym: blocksize (columns per lazy-update block),
    damp (fraction of mean diag(H) added to H), act_order (quantize columns by decreasing
    diag(H)), damp_per_width (damping floor for thin calibration: ``damp_per_width * in /
    tokens``, see ``effective_damp``; 0 = off)."""

    blocksize: int = 128
    damp: float = 0.01
    act_order: bool = False
    damp_per_width: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.blocksize >= 1, f"blocksize={self.blocksize} must be >= 1")
        check(0 <= self.damp < 1, f"damp={self.damp} is outside [0, 1)")
        check(0 <= self.damp_per_width <= 10, f"damp_per_width={self.damp_per_width} is outside [0, 10]")


def effective_damp(damp: float, per_width: float, width: int, tokens: int) -> float:
    """``damp``, raised to ``per_width * width / tokens`` (at most 1) when the calibration has
    fewer tokens than the layer has inputs. Why: such an H is rank-deficient, and with 1%
    damping GPTQ pushes rounding error into the directions calibration never saw; text of
    another domain does use them. minilm-l6 calibrated on 1,024 tokens (its FFN has 1,536
    inputs), scored on other-domain prose: GPTQ 3-bit g64 0.721 embedding cosine against
    RTN's 0.780 with plain damping, 0.786 with this floor (docs/results/real-model.md). With as many
    tokens as inputs H has full rank and GPTQ's usual damping is kept: an always-on floor
    cost harness-tiny's in-domain perplexity."""
    if not per_width or tokens >= width:  # full-rank H: GPTQ's usual damping
        return damp
    return min(max(damp, per_width * width / max(tokens, 1)), 1.0)


def gptq_quantize(weight: torch.Tensor, H: torch.Tensor, bits: int, group: int | None = None, sym: bool = True, *,
                  blocksize: int = 128, damp: float = 0.01, act_order: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """GPTQ-quantize ``weight`` ``[out, in]`` given ``H`` ``[in, in]`` (sum or mean of x x^T).

    Returns ``(codes uint8 [out, in], scales float16 [out, n_groups], zeros uint8 or None)``
    in the layout of ``primitives.quant.quantize_groupwise`` (original column order), with
    ``n_groups = ceil(in / group)``: the last group may hold fewer than ``group`` columns.
    """
    W = weight.detach().float().clone()
    rows, cols = W.shape
    check_quant_args(bits, group, cols)
    g = group_width(cols, group)
    ng = n_groups(cols, group)  # the last group may be partial (ragged)
    H = H.detach().float().clone().to(W.device)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    scales = torch.zeros(rows, ng, device=W.device)
    zeros = torch.zeros(rows, ng, device=W.device)
    static = act_order or group is None
    if static:  # parameters from the original weight, one per group
        for j in range(ng):  # the slice of a ragged last group is just its remaining columns
            scales[:, j], zeros[:, j] = qparams(W[:, j * g:(j + 1) * g], bits, sym)
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(cols, device=W.device)
    W, H = W[:, perm], H[perm][:, perm]
    gid = perm // g  # group of each (permuted) column
    S, Z = scales[:, gid], zeros[:, gid]  # per-column parameters [rows, cols]
    H += damp * torch.mean(torch.diag(H)) * torch.eye(cols, device=W.device)
    L = torch.linalg.cholesky(H)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    codes = torch.zeros(rows, cols, device=W.device)
    maxq = 2 ** bits - 1
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if not static and col % g == 0:  # dynamic groups: params from the updated weights
                # (the group's columns, fewer than g for a ragged last group)
                ahead = torch.cat([W1[:, i:], W[:, i2:]], dim=1)[:, :g]
                sj, zj = qparams(ahead, bits, sym)
                scales[:, col // g], zeros[:, col // g] = sj, zj
                S[:, col:col + g], Z[:, col:col + g] = sj[:, None], zj[:, None]
            s, z, w = S[:, col], Z[:, col], W1[:, i]
            q = torch.clamp(torch.round(w / s) + z, 0, maxq)
            codes[:, col] = q
            err = (w - (q - z) * s) / Hinv1[i, i]
            W1[:, i:].sub_(torch.outer(err, Hinv1[i, i:]))
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    inv = torch.argsort(perm)
    codes = codes[:, inv].to(torch.uint8)
    return codes, scales.to(torch.float16), None if sym else zeros.to(torch.uint8)


def shared_inputs(stats: dict[str, InputStats]) -> list[list[str]]:
    """Names grouped by identical input Hessians (q/k/v, gate/up: one input). GPTQ treats
    rows independently given ``H``, so such layers are solved as one row-stacked matrix:
    the same codes, and one column sweep instead of one per layer (the solver's cost is
    per column: 3,264 column steps per smollm2-135m block instead of 4,992)."""
    groups: list[list[str]] = []
    for name, st in stats.items():
        for g in groups:
            h = stats[g[0]].hessian
            if h is not None and st.hessian is not None and h.shape == st.hessian.shape \
                    and stats[g[0]].n == st.n and torch.equal(h, st.hessian):
                g.append(name)
                break
        else:
            groups.append([name])
    return groups


@register
class GPTQ(Technique):
    name = "gptq"
    family = "quantization"
    config_cls = GPTQConfig
    storage = "packed"
    needs_calibration = True
    suite_specs = ("gptq:bits=4,group=128", "gptq:bits=3")
    description = "GPTQ: Hessian-based weight-only quantization with error feedback, block-sequential, packed"

    def apply(self, model: nn.Module, calibration=None) -> Applied:
        cfg = self.config
        check_config(target_linears(model), cfg.bits, cfg.group)

        def quantize_group(mods, stats):
            out = {}
            for names in shared_inputs(stats):
                st = stats[names[0]]
                damp = effective_damp(cfg.damp, cfg.damp_per_width, st.hessian.shape[0], st.n)
                codes = gptq_quantize(torch.cat([linear_weight(mods[n]).detach() for n in names]), st.H,
                                      cfg.bits, cfg.group, cfg.sym, blocksize=cfg.blocksize, damp=damp,
                                      act_order=cfg.act_order)
                r0 = 0
                for n in names:
                    r1 = r0 + linear_weight(mods[n]).shape[0]
                    part = tuple(None if t is None else t[r0:r1] for t in codes)
                    out[n] = to_quant_linear(mods[n], bits=cfg.bits, group=cfg.group, sym=cfg.sym, codes=part)
                    r0 = r1
            return out

        notes = head_notes(model, cfg.head)
        quantize_sequential(model, calibration, quantize_group)
        if cfg.head:  # the head's Hessian: final hidden states of the quantized model
            quantize_head(model, calibration, quantize_group)
        return Applied(model, calibration_notes(calibration) + notes)
