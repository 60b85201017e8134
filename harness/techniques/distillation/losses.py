"""Distillation losses (Gou et al.'s survey taxonomy), each a function of student and
teacher outputs on the same tokens:

- response (``logits``): ``T^2 KL(softmax(t/T) || softmax(s/T))`` per token (Hinton et al.);
  encoders have no logits, so their response is the output token embedding and the loss
  is ``1 - cosine`` to the teacher's, of the mean-pooled window embedding (what
  ``fidelity.cosine`` scores) and per token, averaged;
- feature (``hidden``): MSE between mapped hidden states through a learned linear
  projection where the widths differ; divided by the teacher state's mean square, so
  layers with large residual norms do not drown the others. The map (``hidden_pairs``):
  embeddings onto embeddings, the last state onto the last, and student block j's output
  onto the teacher state the next kept block read as its input (``uniform``: the end of
  the teacher segment the block stands for, TinyBERT's ``g(m) = m N / M`` when every n-th
  block is kept), or onto the output of the teacher block it was taken from (``origin``);
- relation (``relation``): MiniLM (Wang et al. 2020), teacher's LAST block against the
  student's last block: KL(teacher || student) of the self-attention distributions
  ``softmax(Q K^T / sqrt(d))`` per head plus KL of the value relation ``softmax(V V^T /
  sqrt(d))`` per head, summed; means over batch, heads and query positions. Q, K, V are
  taken by hooks (rotary embeddings applied, GQA's KV heads repeated), so sdpa and eager
  attention give the same loss and no dropout-perturbed probabilities are used. When the
  head counts differ, the projections are split into shared "relation heads"
  (MiniLMv2). Future positions are masked for causal LMs, padded keys and queries for
  every model (the training windows have none, but the functions take a mask).
  Those relations are functions of the last block's *inputs* only, so the last block's
  attention output and FFN (which write the output states) get no gradient from them; the
  relation loss therefore also holds the token-to-token relation of the *output* states
  (``state_relation``: MiniLM's value-relation KL on the last hidden states, relation heads
  as MiniLMv2 splits them, so no projection is needed where the widths differ).
  ``relation_states=false`` gives MiniLM's two terms alone. All three map the teacher's
  last block onto the student's last: a student that keeps the teacher's last block
  (``select=spread`` or ``angular``) is what this assumes; on minilm-l6 -> 3 layers it is
  the difference between losing and gaining embedding cosine (docs/results/distillation.md).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from harness.config import SpecError
from harness.techniques.structure import attn_of, heads

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
    """Encoders' response loss: the mean of (1 - cosine of the mean-pooled window
    embeddings), which is what ``fidelity.cosine`` scores (sentence-transformers' pooling;
    the windows have no padding), and (1 - mean token cosine), which gives the pooled
    term one target per token instead of one per window."""
    s, t = student.float(), teacher.float()
    pooled = F.cosine_similarity(s.mean(1), t.mean(1), dim=-1).mean()
    token = F.cosine_similarity(s, t, dim=-1).mean()
    return 1 - (pooled + token) / 2


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


HIDDEN_MAPS = ("uniform", "origin")


def hidden_pairs(kept: list[int], n_teacher: int, how: str = "uniform") -> list[tuple[int, int]]:
    """(student, teacher) hidden-state indices: embeddings onto embeddings; student block
    j's output onto teacher state ``kept[j+1]`` (``uniform``: the input the next kept block
    had in the teacher, so block j is asked to do the work of the teacher blocks dropped
    after it) or ``kept[j] + 1`` (``origin``: the output of the block it was taken from,
    which a teacher-initialised block already meets); the last onto the last
    (transformers returns the final state after the final norm, as TinyBERT maps it)."""
    k = len(kept)
    inner = kept[1:] if how == "uniform" else [t + 1 for t in kept[:-1]]
    return [(0, 0)] + [(j + 1, t) for j, t in enumerate(inner)] + [(k, n_teacher)]


class AttentionTap:
    """Forward hooks on one block recording its query, key and value projections (and the
    rotary position embeddings the attention module is called with, if any), so the
    attention distributions and value relations can be rebuilt outside the model: the
    same path for every attention implementation (sdpa/eager), never the dropout-perturbed
    probabilities ``output_attentions`` returns in training mode."""

    def __init__(self, block: nn.Module) -> None:
        a = attn_of(block)
        self.head_dim, self.n_q, self.n_kv = a.head_dim, *heads(block, a)
        self.store: dict[str, object] = {}
        fused = a.v is None  # GPT-2 c_attn = [q | k | v]

        def out_hook(key: str):
            def hook(_m, _args, out):
                if fused:
                    d = out.shape[-1] // 3
                    self.store.update(q=out[..., :d], k=out[..., d:2 * d], v=out[..., 2 * d:])
                else:
                    self.store[key] = out
            return hook

        def pre_hook(_m, _args, kwargs):
            self.store["rope"] = kwargs.get("position_embeddings")

        mods = [(a.q, "q")] if fused else [(a.q, "q"), (a.k, "k"), (a.v, "v")]
        self.handles = [block.get_submodule(m).register_forward_hook(out_hook(k)) for m, k in mods]
        self.handles.append(block.get_submodule(a.module).register_forward_pre_hook(pre_hook, with_kwargs=True))

    def qkv(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q, k, v) as [batch, seq, width]: rotary embeddings applied to q and k where the
        model uses them, KV heads repeated to the query heads under GQA."""
        q, k, v = (self.store[x].float() for x in "qkv")
        b, n = q.shape[:2]
        d = self.head_dim
        q, k = q.view(b, n, -1, d).transpose(1, 2), k.view(b, n, -1, d).transpose(1, 2)
        rope = self.store.get("rope")
        if rope is not None:
            from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

            q, k = apply_rotary_pos_emb(q, k, rope[0].float(), rope[1].float())
        k = k.repeat_interleave(self.n_q // self.n_kv, dim=1)
        flat = lambda x: x.transpose(1, 2).reshape(b, n, -1)  # noqa: E731
        return flat(q), flat(k), v

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.store.clear()


def relation_heads(d_student: int, d_teacher: int, preferred: int) -> int:
    """Relation heads dividing both widths: ``preferred`` when it does, else their gcd's
    largest divisor not above it."""
    g = math.gcd(d_student, d_teacher)
    return max(h for h in range(1, preferred + 1) if g % h == 0)


def _log_relation(a: torch.Tensor, b: torch.Tensor, n_heads: int, causal: bool,
                  valid: torch.Tensor | None) -> torch.Tensor:
    """log softmax(a_h b_h^T / sqrt(d_h)) per relation head h: [batch, heads, seq, seq];
    future positions masked for causal LMs, padded keys (``valid`` False) for every model."""
    bs, n, d = a.shape
    a = a.view(bs, n, n_heads, d // n_heads).transpose(1, 2)
    b = b.view(bs, n, n_heads, d // n_heads).transpose(1, 2)
    s = a @ b.transpose(-1, -2) / math.sqrt(d // n_heads)
    if causal:
        s = s.masked_fill(torch.ones(n, n, dtype=torch.bool, device=s.device).triu(1), float("-inf"))
    if valid is not None:
        s = s.masked_fill(~valid[:, None, None, :], float("-inf"))
    return F.log_softmax(s, -1)


def relation_kl(s_pair: tuple[torch.Tensor, torch.Tensor], t_pair: tuple[torch.Tensor, torch.Tensor],
                n_heads: int, causal: bool, valid: torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher || student) of one relation (rows of softmax(X Y^T / sqrt(d)) per head),
    mean over batch, heads and the query positions that are not padding."""
    s = _log_relation(*s_pair, n_heads, causal, valid)
    t = _log_relation(*t_pair, n_heads, causal, valid)
    kl = (t.exp() * (t - s)).nan_to_num(0.0).sum(-1)  # masked entries: 0 * (-inf - -inf)
    if valid is None:
        return kl.mean()
    w = valid[:, None, :].float().expand_as(kl)
    return (kl * w).sum() / w.sum().clamp(min=1)


def value_relation(v_s: torch.Tensor, v_t: torch.Tensor, n_heads: int, causal: bool,
                   valid: torch.Tensor | None = None) -> torch.Tensor:
    """MiniLM value-relation KL: softmax(V V^T / sqrt(d)) per relation head."""
    return relation_kl((v_s, v_s), (v_t, v_t), n_heads, causal, valid)


def minilm(s: AttentionTap, t: AttentionTap, at_heads: int, vr_heads: int, causal: bool,
           valid: torch.Tensor | None = None) -> torch.Tensor:
    """MiniLM's deep self-attention distillation (Wang et al. 2020) on the last blocks:
    attention-distribution KL (softmax(Q K^T / sqrt(d)), the model's own attention when the
    relation heads are its heads) plus the value-relation KL."""
    qs, ks, vs = s.qkv()
    qt, kt, vt = t.qkv()
    return (relation_kl((qs, ks), (qt, kt), at_heads, causal, valid)
            + relation_kl((vs, vs), (vt, vt), vr_heads, causal, valid))


def state_relation(s_h: torch.Tensor, t_h: torch.Tensor, n_heads: int, causal: bool,
                   valid: torch.Tensor | None = None) -> torch.Tensor:
    """The output states' token relation: the value-relation formula, softmax(H H^T / sqrt(d))
    per relation head, applied to the last hidden states instead of the last block's values,
    so the block's attention output and FFN are trained too."""
    return relation_kl((s_h, s_h), (t_h, t_h), n_heads, causal, valid)


__all__ = ["HIDDEN_MAPS", "LOSSES", "Projections", "embedding_cos", "hard_ce", "hidden_mse", "hidden_pairs",
           "logits_kd", "minilm", "parse_losses", "relation_heads", "relation_kl", "state_relation", "value_relation",
           "AttentionTap"]
