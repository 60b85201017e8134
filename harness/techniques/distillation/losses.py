"""Distillation losses (Gou et al.'s survey taxonomy), each a function of student and
teacher outputs on the same tokens:

- response (``logits``): ``T^2 KL(softmax(t/T) || softmax(s/T))`` per token (Hinton et al.);
  encoders have no logits, so their response is the output token embedding and the loss
  is ``1 - cosine`` to the teacher's (what the harness scores them by);
- feature (``hidden``): MSE between mapped hidden states, student block j against the
  teacher block it was taken from (TinyBERT's uniform map), through a learned linear
  projection where the widths differ; divided by the teacher state's mean square, so
  layers with large residual norms do not drown the others;
- relation (``relation``): MiniLM's self-attention value-relation, ``KL(softmax(V_t V_t^T /
  sqrt(d)) || softmax(V_s V_s^T / sqrt(d)))`` over relation heads of the last block's
  values (the number of relation heads is free, so teacher and student head counts may
  differ); future positions are masked for causal LMs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from harness.config import SpecError
from harness.techniques.pruning.surgery import attn_of

LOSSES = ("logits", "hidden", "relation")


def parse_losses(text: str) -> tuple[str, ...]:
    """``"logits+hidden"`` -> ("logits", "hidden"); a name not allowed is a one-line error."""
    names = [t.strip() for t in str(text).split("+")]
    bad = [t for t in names if t not in LOSSES]
    if bad or not names or len(set(names)) != len(names):
        what = f"{bad[0]!r} is not a distillation loss" if bad else "repeats a term"
        raise SpecError(f"loss={text!r}: {what}; allowed: {', '.join(LOSSES)}, combined with + "
                        "(e.g. logits+hidden)")
    return tuple(names)


def logits_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2-scaled KL(teacher || student) of the softened distributions, mean per token."""
    s = F.log_softmax(student.float() / temperature, -1).flatten(0, -2)
    t = F.log_softmax(teacher.float() / temperature, -1).flatten(0, -2)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature ** 2


def hard_ce(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy on the window's own tokens (the hard labels)."""
    lg = logits[:, :-1].float()
    return F.cross_entropy(lg.reshape(-1, lg.shape[-1]), ids[:, 1:].reshape(-1))


def embedding_cos(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """1 - mean token cosine of the output embeddings (encoders' response loss)."""
    return 1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1).mean()


class Projections(nn.Module):
    """One learned linear map per student hidden state whose width differs from the teacher's
    (identity where they agree); trained with the student, discarded after."""

    def __init__(self, d_student: int, d_teacher: int, count: int, device: torch.device) -> None:
        super().__init__()
        self.maps = nn.ModuleList(nn.Linear(d_student, d_teacher, bias=False, device=device)
                                  for _ in range(count)) if d_student != d_teacher else None

    def forward(self, i: int, h: torch.Tensor) -> torch.Tensor:
        return h.float() if self.maps is None else self.maps[i](h.float())


def hidden_mse(student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...], pairs: list[tuple[int, int]],
               proj: Projections) -> torch.Tensor:
    """Mean over ``pairs`` (student index, teacher index) of the scale-free MSE."""
    total = 0.0
    for j, (si, ti) in enumerate(pairs):
        t = teacher[ti].float()
        total = total + F.mse_loss(proj(j, student[si]), t) / t.square().mean().clamp(min=1e-6)
    return total / len(pairs)


def hidden_pairs(kept: list[int]) -> list[tuple[int, int]]:
    """(student, teacher) hidden-state indices: embeddings, then each student block's output
    against the output of the teacher block it came from."""
    return [(0, 0)] + [(j + 1, t + 1) for j, t in enumerate(kept)]


def value_tap(block: nn.Module, store: dict[str, torch.Tensor], key: str):
    """Forward hook recording the value projection of ``block`` in ``store[key]``."""
    a = attn_of(block)
    fused = a.v is None  # GPT-2 c_attn = [q | k | v]
    mod = block.get_submodule(a.q if fused else a.v)

    def hook(_m, _args, out):
        store[key] = out[..., 2 * out.shape[-1] // 3:] if fused else out
    return mod.register_forward_hook(hook)


def relation_heads(d_student: int, d_teacher: int, preferred: int) -> int:
    """Relation heads dividing both value widths: ``preferred`` when it does, else their gcd's
    largest divisor not above it."""
    g = math.gcd(d_student, d_teacher)
    return max(h for h in range(1, preferred + 1) if g % h == 0)


def value_relation(v_s: torch.Tensor, v_t: torch.Tensor, n_heads: int, causal: bool) -> torch.Tensor:
    """MiniLM value-relation KL, mean over batch, heads and query positions."""
    def rel(v: torch.Tensor) -> torch.Tensor:
        b, n, d = v.shape
        v = v.float().view(b, n, n_heads, d // n_heads).transpose(1, 2)
        s = v @ v.transpose(-1, -2) / math.sqrt(d // n_heads)
        if causal:
            s = s.masked_fill(torch.ones(n, n, dtype=torch.bool, device=v.device).triu(1), float("-inf"))
        return F.log_softmax(s, -1)

    s, t = rel(v_s), rel(v_t)
    p = t.exp()
    kl = (p * (t - s)).nan_to_num(0.0).sum(-1)  # masked entries: 0 * (-inf - -inf)
    return kl.mean()


__all__ = ["LOSSES", "Projections", "embedding_cos", "hard_ce", "hidden_mse", "hidden_pairs", "logits_kd",
           "parse_losses", "relation_heads", "value_relation", "value_tap"]
