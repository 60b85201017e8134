"""Students: a smaller model of the teacher's own architecture (``student:``), the
starting point of distillation.

- Depth: ``layers=K`` keeps K of the teacher's blocks. ``select=every`` keeps every n-th
  block when K divides the depth (DistilBERT's 6 -> 3 keeps blocks 0, 2, 4), else K blocks
  spread evenly from first to last; ``select=spread`` always spreads them from the first
  block to the last, both kept (DistilBERT's 12 -> 6 kept 0, 2, 4, 7, 9, 11; a student whose
  last block is the teacher's last is what MiniLM's last-block relation loss assumes: it
  asks the student's last block to attend like the teacher's last);
  ``select=first`` keeps the first K; ``select=angular``
  drops the contiguous run of blocks whose input and output hidden states are closest in
  angle (Gromov et al., "The Unreasonable Ineffectiveness of the Deeper Layers").
- Width: ``width=F`` keeps the fraction F of FFN neurons and of attention head groups in
  every kept block, chosen by the structured-pruning importance (``techniques.structure``);
  the hidden size is unchanged. Heads are cut only where the config can express it
  (Llama-family ``head_dim``); BERT students keep their heads (fewer heads at the same
  head size is not a BERT config) and cut FFN neurons only; GPT-2 and OPT refuse ``width``.
- Init: ``init=teacher`` takes the kept weights (DistilBERT, Minitron); ``init=random``
  builds a freshly initialised model of the same config (the "trained from scratch"
  control). Either way the HF config describes the student, so a saved student reloads
  with transformers alone.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from harness.calibration import Calibration, find_blocks
from harness.config import SpecError, check
from harness.techniques.base import Applied, Technique, register
from harness.techniques.structure import (
    LLAMA_LIKE,
    angular_run,
    attn_of,
    ffn_of,
    group_scores,
    heads,
    neuron_scores,
    probe,
    remove_ffn_neurons,
    remove_head_groups,
    remove_layers,
)

Init = Literal["teacher", "random"]
Select = Literal["every", "spread", "first", "angular"]
WIDTH_FAMILIES = sorted(LLAMA_LIKE | {"bert"})


@dataclass(frozen=True)
class StudentConfig:
    """layers: blocks kept (0: the teacher's depth); width: fraction of FFN neurons and head
    groups kept (1: all); init: teacher (its weights) or random; select: which blocks
    (every n-th, spread first to last, the first K, or by angular distance); seed: random
    init and probe."""

    layers: int = 0
    width: float = 1.0
    init: Init = "teacher"
    select: Select = "every"
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.layers >= 0, f"layers={self.layers} must be >= 1 (or 0: the teacher's depth)")
        check(0 < self.width <= 1, f"width={self.width} is outside (0, 1]; a student is at most the teacher's width")


@dataclass
class Student:
    """The student model and how it maps onto the teacher."""

    model: nn.Module
    kept: list[int]  # teacher block index of each student block
    notes: list[str] = field(default_factory=list)


def every_nth(n: int, k: int) -> list[int]:
    """K of n block indices: every (n/K)-th from block 0 when K divides n, else evenly spread
    from the first block to the last."""
    if n % k == 0:
        return list(range(0, n, n // k))
    return spread(n, k) if k > 1 else [0]


def spread(n: int, k: int) -> list[int]:
    """K of n block indices evenly spaced from the first block to the last, both included
    (K=1: the last block, whose output the teacher's head reads)."""
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)}) if k > 1 else [n - 1]


def select_blocks(model: nn.Module, cfg: StudentConfig, calib: Calibration | None) -> list[int]:
    n = len(find_blocks(model)[1])
    k = cfg.layers or n
    if k > n:
        raise SpecError(f"layers={k} is larger than the teacher's {n} layers; a student has 1..{n} layers")
    if k == n:
        return list(range(n))
    if cfg.select == "first":
        return list(range(k))
    if cfg.select == "angular":
        s = angular_run(model, calib if calib is not None else probe(model), n - k)
        return [i for i in range(n) if not s <= i < s + n - k]
    if cfg.select == "spread":
        return spread(n, k)
    return every_nth(n, k)


def _cut_width(model: nn.Module, width: float, calib: Calibration | None) -> list[str]:
    mt = getattr(model.config, "model_type", "?")
    if mt not in WIDTH_FAMILIES:
        raise SpecError(f"width={width} does not apply to {mt} models (their config cannot express the narrower "
                        f"student, so transformers could not reload it); width works for {', '.join(WIDTH_FAMILIES)}")
    _, blocks = find_blocks(model)
    notes = []
    scores = neuron_scores(model, calib)
    total = scores[0].numel()
    keep_n = max(1, round(width * total))
    if keep_n < total:
        remove_ffn_neurons(model, {i: torch.topk(s, keep_n).indices.cpu() for i, s in enumerate(scores)})
    notes.append(f"FFN neurons {keep_n} of {total} per block")
    if mt == "bert":
        notes.append("heads kept: a BERT config cannot express fewer heads at the same head size")
        return notes
    nq, nkv = heads(blocks[0], attn_of(blocks[0]))
    keep_g = max(1, round(width * nkv))
    if keep_g < nkv:
        g = group_scores(model, calib)
        remove_head_groups(model, {i: torch.topk(s, keep_g).indices.cpu() for i, s in enumerate(g)})
    notes.append(f"KV head groups {keep_g} of {nkv} per block ({keep_g * nq // nkv} query heads)")
    return notes


def _random_like(model: nn.Module, seed: int) -> nn.Module:
    """A freshly initialised model of ``model``'s (updated) config, on its device and dtype."""
    p = next(model.parameters())
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG state
        torch.manual_seed(seed)
        fresh = type(model)(copy.deepcopy(model.config))
    return fresh.to(device=p.device, dtype=p.dtype)


def build_student(teacher: nn.Module, cfg: StudentConfig, calibration: Calibration | None = None) -> Student:
    """A student from a copy of ``teacher`` (the teacher is not modified)."""
    _, blocks = find_blocks(teacher)
    n = len(blocks)
    kept = select_blocks(teacher, cfg, calibration)
    model = copy.deepcopy(teacher)
    notes = [f"student: {len(kept)} of {n} blocks {kept} (select={cfg.select})"]
    if len(kept) < n:
        remove_layers(model, [i for i in range(n) if i not in kept])
    if cfg.width < 1:
        ffn_of(find_blocks(model)[1][0])  # a family without a known FFN layout fails here, by name
        notes += _cut_width(model, cfg.width, calibration)
    if cfg.init == "random":
        model = _random_like(model, cfg.seed)
        notes.append(f"weights randomly initialised (seed {cfg.seed})")
    else:
        notes.append("weights taken from the teacher")
    model.eval()
    return Student(model, kept, notes)


@register
class StudentTechnique(Technique):
    name = "student"
    family = "architecture"
    config_cls = StudentConfig
    storage = "structural"
    uses_calibration = True
    suite_specs = ("student:layers=2", "student:layers=2,width=0.5")
    description = "smaller model of the teacher's architecture: every n-th block, narrower FFN/heads"

    def apply(self, model: nn.Module, calibration=None) -> Applied:
        s = build_student(model, self.config, calibration)
        return Applied(s.model, s.notes)


__all__ = ["Student", "StudentConfig", "angular_run", "build_student", "every_nth", "select_blocks", "spread"]
