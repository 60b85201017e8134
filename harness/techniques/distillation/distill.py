"""``distill``: train a student from the uncompressed teacher.

The teacher is the model the technique is given (the uncompressed model when ``distill``
is the first stage), frozen in eval mode. The student is built by
``architecture.student.build_student`` from the same options as ``student:`` (``layers``,
``width``, ``init``, ``select``); by default it has the teacher's own shape
(self-distillation). Training: AdamW on every student parameter (and the hidden-state
projections, where widths differ) for ``steps`` steps of ``batch`` windows of the training
stream (``harness.models.train_data``: the bundled train split, a text file or an HF
dataset directory, seeded order, ``steps x batch x seq_len`` tokens; an encoder's windows
are framed ``[CLS] ... [SEP]`` as its tokenizer frames the sentences it is scored on), warm-up
then linear decay of the learning rate.

Loss per step, for causal LMs: ``alpha * sum(distillation terms) + (1 - alpha) * CE`` on
the window's next tokens (``alpha=0`` with ``loss=logits`` trains the student without the
teacher: the control of the distillation benchmark). Encoders have no hard labels, so the
sum of the distillation terms is the loss. The terms are in ``losses.py``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

import harness.techniques.distillation.losses as L
from harness.calibration import find_blocks
from harness.config import SpecError, check
from harness.models.train_data import for_technique
from harness.techniques.architecture.student import Init, Select, StudentConfig, build_student
from harness.techniques.base import Applied, Technique, from_config, register
from harness.techniques.finetune import (
    cycled_windows,
    is_causal_lm,
    loss_summary,
    train,
    train_figures,
    warmup_linear,
)


@dataclass(frozen=True)
class DistillConfig:
    """loss: logits, hidden, relation or a + combination; temperature, alpha (weight of the
    distillation terms against the hard-label CE); hidden_map: which teacher state each
    student block's output is held to (``losses.hidden_pairs``); steps, lr, batch, seq_len:
    the training run; layers, width, init, select: the student (as ``student:``); data:
    training source (train, a text file or an HF dataset directory); seed: data order,
    random init and dropout; relation_states: the relation loss also holds the output
    states' token relation (``losses.state_relation``; false: MiniLM's two terms alone)."""

    loss: str = "logits"
    temperature: float = 2.0
    alpha: float = 0.5
    hidden_map: Literal["uniform", "origin"] = "uniform"
    steps: int = 100
    lr: float = 1e-3
    batch: int = 8
    seq_len: int = 128
    layers: int = 0
    width: float = 1.0
    init: Init = "teacher"
    select: Select = "every"
    data: str = "train"
    seed: int = 0
    relation_states: bool = True

    def __post_init__(self) -> None:
        L.parse_losses(self.loss)
        check(self.temperature > 0, f"temperature={self.temperature} must be > 0")
        check(0 <= self.alpha <= 1, f"alpha={self.alpha} is outside [0, 1]")
        check(self.steps >= 1, f"steps={self.steps} must be >= 1")
        check(0 < self.lr < 1, f"lr={self.lr} is outside (0, 1)")
        check(self.batch >= 1, f"batch={self.batch} must be >= 1")
        check(self.seq_len >= 2, f"seq_len={self.seq_len} must be >= 2")
        StudentConfig(self.layers, self.width, self.init, self.select, self.seed)  # same checks as student:

    @property
    def student(self) -> StudentConfig:
        return StudentConfig(self.layers, self.width, self.init, self.select, self.seed)


def _forward(model: nn.Module, ids: torch.Tensor, hidden: bool, causal: bool):
    kw = {"use_cache": False} if causal else {}
    out = model(input_ids=ids, output_hidden_states=hidden, **kw)
    if hidden and getattr(out, "hidden_states", None) is None:
        raise SpecError(f"loss=hidden needs hidden states, but {type(model).__name__} returns none; "
                        f"allowed without them: logits, relation")
    return out


class Objective:
    """The per-step loss of one distillation run (teacher forward under no_grad)."""

    def __init__(self, teacher: nn.Module, student: nn.Module, kept: list[int], cfg: DistillConfig) -> None:
        self.teacher, self.student, self.cfg = teacher, student, cfg
        self.terms = L.parse_losses(cfg.loss)
        self.causal = is_causal_lm(teacher)
        self.dev = next(student.parameters()).device
        self.pairs = L.hidden_pairs(kept, len(find_blocks(teacher)[1]), cfg.hidden_map)
        d_s, d_t = student.config.hidden_size, teacher.config.hidden_size
        self.proj = L.Projections(d_s, d_t, len(self.pairs), self.dev)
        self.taps: list[L.AttentionTap] = []
        self._hooks: list = []
        if "relation" in self.terms:  # MiniLM: the teacher's last block onto the student's last
            self.taps = [L.AttentionTap(find_blocks(m)[1][-1]) for m in (student, teacher)]
            s, t = self.taps
            self.at_heads = L.relation_heads(s.n_q * s.head_dim, t.n_q * t.head_dim, t.n_q)
            self.vr_heads = L.relation_heads(s.n_kv * s.head_dim, t.n_kv * t.head_dim, t.n_kv)
            self.st_heads = L.relation_heads(student.config.hidden_size, teacher.config.hidden_size, t.n_q)
        self.states = "relation" in self.terms and cfg.relation_states
        self.heads_in: list[dict[str, torch.Tensor]] = []
        if self.states and self.causal:  # the final (normed) states: the output head's input
            self.heads_in = [{}, {}]
            for m, store in zip((student, teacher), self.heads_in):
                self._hooks.append(m.get_output_embeddings().register_forward_pre_hook(
                    lambda _m, args, store=store: store.__setitem__("h", args[0])))
        # alpha=0 with the response loss only: the teacher's outputs are never used
        self.uses_teacher = not (self.causal and cfg.alpha == 0)

    def params(self) -> list[nn.Parameter]:
        return list(self.student.parameters()) + list(self.proj.parameters())

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.to(self.dev)
        hidden = "hidden" in self.terms
        if self.uses_teacher:
            with torch.no_grad():
                t = _forward(self.teacher, ids, hidden, self.causal)
        s = _forward(self.student, ids, hidden, self.causal)
        kd = torch.zeros((), device=self.dev)
        if self.uses_teacher:
            if "logits" in self.terms:
                kd = kd + (L.logits_kd(s.logits, t.logits, self.cfg.temperature) if self.causal
                           else L.embedding_cos(s.last_hidden_state, t.last_hidden_state))
            if hidden:
                kd = kd + L.hidden_mse(s.hidden_states, t.hidden_states, self.pairs, self.proj)
            if "relation" in self.terms:
                kd = kd + L.minilm(*self.taps, self.at_heads, self.vr_heads, self.causal)
            if self.states:
                hs, ht = ((d["h"] for d in self.heads_in) if self.causal
                          else (s.last_hidden_state, t.last_hidden_state))
                kd = kd + L.state_relation(hs, ht, self.st_heads, self.causal)
        if not self.causal:
            return kd
        return self.cfg.alpha * kd + (1 - self.cfg.alpha) * L.hard_ce(s.logits, ids)

    def close(self) -> None:
        for tap in self.taps:
            tap.remove()
        for h in self._hooks:
            h.remove()
        self.heads_in.clear()


def distill(teacher: nn.Module, calibration, cfg: DistillConfig, base: nn.Module | None = None
            ) -> tuple[nn.Module, list[str], dict[str, float]]:
    """Build the student, train it against ``teacher``; (student, notes, train.* figures).

    ``base``: the model the student is built from (default: the teacher). A pipeline's
    distill stage passes its current, already pruned model, so it recovers against the
    uncompressed teacher."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    st = build_student(teacher if base is None else base, cfg.student, calibration)
    data = for_technique(calibration, tokens=cfg.steps * cfg.batch * cfg.seq_len, seq_len=cfg.seq_len,
                         seed=cfg.seed, source=cfg.data, special_tokens=not is_causal_lm(teacher))
    obj = Objective(teacher, st.model, st.kept, cfg)
    t0 = time.perf_counter()
    try:
        losses = train(st.model, obj.params(), cycled_windows(data, cfg.batch), obj, steps=cfg.steps, lr=cfg.lr,
                       schedule=warmup_linear(cfg.steps), seed=cfg.seed)
    finally:
        obj.close()
    wall = time.perf_counter() - t0
    tokens = cfg.steps * cfg.batch * data.seq_len
    d = data.describe()
    what = "+".join(obj.terms) if obj.uses_teacher else "none (alpha=0: hard labels only, no teacher)"
    if "relation" in obj.terms:
        what += " (relations: last-block attention + value" + (" + output-state tokens)" if cfg.relation_states
                                                               else ", MiniLM only)")
    pairs = f", hidden map {cfg.hidden_map} (student, teacher state): {obj.pairs}" if "hidden" in obj.terms else ""
    n_teacher = len(find_blocks(teacher)[1])
    if "relation" in obj.terms and st.kept[-1] != n_teacher - 1:
        what += (f"; the student's last block is teacher block {st.kept[-1]}, not the teacher's last "
                 f"({n_teacher - 1}), which the relation loss maps onto it (select=spread keeps it)")
    notes = [*st.notes, f"distillation loss {what}, T={cfg.temperature:g}, alpha={cfg.alpha:g}{pairs}"
             + ("" if obj.causal else " (encoder: no hard labels, distillation terms only)"),
             f"trained {len(losses)} steps on {tokens} tokens of {d['train_source']} "
             f"({d['train_epochs']} epochs of its {d['train_source_tokens']} tokens): loss {loss_summary(losses)}"]
    st.model.eval()
    return st.model, notes, train_figures(losses, wall, tokens)


@register
class Distill(Technique):
    name = "distill"
    config_version = 3  # v2: hidden_map=uniform, dropout seeded; v3: relation holds the output-state relation
    family = "distillation"
    config_cls = DistillConfig
    storage = from_config(lambda cfg: "structural" if cfg.layers or cfg.width < 1 else "dense")
    needs_calibration = True  # the training stream is drawn with the calibration's tokenizer
    needs_grad = True
    suite_specs = ("distill:loss=logits,layers=2,steps=4,batch=2,seq_len=64",
                   "distill:loss=logits+hidden,layers=2,steps=60,batch=4",
                   "distill:loss=relation,layers=2,select=spread,steps=60,batch=4")
    description = "knowledge distillation (logits / hidden / relation losses) into a student built from the teacher"

    def apply(self, model: nn.Module, calibration=None) -> Applied:
        student, notes, figures = distill(model, calibration, self.config)
        return Applied(student, notes, figures=figures)


__all__ = ["Distill", "DistillConfig", "Objective", "distill"]
