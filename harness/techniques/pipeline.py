"""Pipelines: several techniques applied in order, as one technique (``pipeline``).

Spec: stages joined by ``+``, e.g. ``prune-neurons:fraction=0.25 + distill:steps=300 +
gptq:bits=4,group=64``. A ``+`` separates stages only where the text after it starts a
registered technique name followed by ``:``, ``+`` or the end (or, around spaces, any
``name:``, so a misspelt stage gets the "did you mean" error); otherwise it belongs to an
option value (``distill:loss=logits+hidden``). A stage may carry ``targets=P1|P2``: fnmatch
patterns on full module names, the same as a recipe's ``targets`` list.

Recipe (YAML, ``recipe.load_recipe``; ``spec.make("x.yaml")`` and ``--technique x.yaml`` accept it)::

    stages:
      - technique: prune-neurons
        options: {fraction: 0.25}
      - technique: gptq
        options: {bits: 4, group: 64}
        targets: ["model.layers.*.mlp.*"]   # omitted: every layer the technique takes

Running: each stage gets the previous stage's model and the same calibration *windows*;
the activations it calibrates on are drawn by running those windows through the current
model, so every stage calibrates on what the earlier stages made. A ``distill`` stage after
the first trains the current model against the pipeline's uncompressed input (the
teacher), as Minitron recovers a pruned model. ``targets`` restrict the model walk
(``calibration.restrict_targets``); a stage that changed a layer outside them is an error.
Stage order is checked before any work (``stacking.check_order``), stacked formats are
made between stages (``stacking.Stacker``). Each stage's spec, wall time, RSS growth,
storage, train figures and notes go into ``Applied.extra["stages"]`` (the compress.*
records' extra), plus whatever a stage observer (``observe_stages``, e.g. the size after
each stage from ``harness.evaluation``) returns.

Which strings are pipelines, and building one from a spec or a recipe path, is
``harness.techniques.spec`` (above this module and ``recipe``); each stage runs through the
one compress path, ``harness.techniques.run.run_technique``.
"""
from __future__ import annotations

import contextlib
import contextvars
import copy
import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from harness.calibration import restrict_targets
from harness.config import SpecError, build_config, check, config_to_dict, config_to_spec, parse_spec, resolved_key
from harness.registry import UnknownNameError
from harness.techniques.base import TECHNIQUES, Applied, Technique, build, from_config, register
from harness.techniques.run import run_technique
from harness.techniques.stacking import Stacker, check_order, check_untouched, snapshot

_NAME = re.compile(r"[A-Za-z][\w.-]*")
StageObserver = Callable[[int, nn.Module], dict[str, Any]]
_OBSERVER: contextvars.ContextVar[StageObserver | None] = contextvars.ContextVar("harness_stage_observer",
                                                                                 default=None)


@contextlib.contextmanager
def observe_stages(fn: StageObserver | None) -> Iterator[None]:
    """Call ``fn(stage_number, model)`` after every pipeline stage inside this block; the
    dict it returns joins that stage's record (measurements stay outside the techniques)."""
    token = _OBSERVER.set(fn)
    try:
        yield
    finally:
        _OBSERVER.reset(token)


def stage_observer() -> StageObserver | None:
    return _OBSERVER.get()


def split_stages(spec: str) -> list[str]:
    """The stage texts of a pipeline spec (one element for a plain technique spec)."""
    names = set(TECHNIQUES.names())
    parts, start = [], 0
    for m in re.finditer(r"\+", spec):
        rest = spec[m.end():]
        word = _NAME.match(rest.lstrip())
        if not word:
            if not rest.strip():  # a trailing '+': an empty last stage (refused by name)
                parts.append(spec[start:m.start()])
                start = m.end()
            continue
        tail = rest.lstrip()[word.end():]  # what follows the name
        ends = tail.startswith(":") or tail.strip() == "" or tail.lstrip().startswith("+")
        spaced = spec[m.start() - 1:m.start()].isspace() and rest[:1].isspace()
        if ends and (word.group(0) in names or spaced):
            parts.append(spec[start:m.start()])
            start = m.end()
    parts.append(spec[start:])
    return [p.strip() for p in parts]


@dataclass(frozen=True)
class Stage:
    """One stage: its canonical technique spec and the layer-name patterns it may touch."""

    spec: str
    targets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for p in self.targets:
            check(isinstance(p, str) and p.strip() != "" and not any(c in p for c in ",|+ "),
                  f"targets pattern {p!r} must be a non-empty module-name pattern without ',', '|', '+' or spaces "
                  f"(e.g. 'model.layers.*.mlp.*')")

    @property
    def text(self) -> str:
        """The stage as written in a pipeline spec (targets as ``targets=P1|P2``)."""
        if not self.targets:
            return self.spec
        return f"{self.spec}{',' if ':' in self.spec else ':'}targets={'|'.join(self.targets)}"


@functools.lru_cache(maxsize=256)
def _techniques(stages: tuple[Stage, ...]) -> tuple[Technique, ...]:
    return tuple(build(*parse_spec(s.spec)) for s in stages)


def _storage(stages: tuple[Stage, ...]) -> str:
    kinds = {t.storage for t in _techniques(stages)}
    for k in ("packed", "structural", "shared", "mask", "fake-quant"):
        if k in kinds:
            return k
    return "dense"


@dataclass(frozen=True)
class PipelineConfig:
    """stages: the techniques in order (at least one; ``spec.make`` builds pipelines of two
    or more from a spec, a recipe may hold one stage with targets)."""

    stages: tuple[Stage, ...] = ()
    # Each stage's full config (defaults included) and config version, so a baseline keyed by
    # the resolved config never compares numbers across a changed stage default.
    resolved: tuple[str, ...] = field(default=(), compare=False, init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.stages, tuple) or not all(isinstance(s, Stage) for s in self.stages):
            raise SpecError(f"pipeline stages {self.stages!r} are not stages; write a pipeline as specs joined "
                            f"by ' + ' (e.g. 'magnitude + rtn:bits=4') or give a recipe file")
        if not self.stages:
            return  # the registry's default (listing only); an empty pipeline refuses to run
        for s in self.stages:
            if parse_spec(s.spec)[0] == "pipeline":
                raise SpecError("a pipeline stage cannot itself be a pipeline; list its stages instead")
        techs = _techniques(self.stages)
        check_order([(s.text, t, s.targets) for s, t in zip(self.stages, techs)])
        object.__setattr__(self, "resolved", tuple(
            resolved_key(t.name, config_to_dict(t.config), t.config_version) for t in techs))


def _kinds(cfg: PipelineConfig) -> tuple[str, ...]:
    techs = _techniques(cfg.stages)
    return tuple(k for k in ("causal-lm", "encoder") if all(k in t.model_kinds for t in techs))


class _DistillFrom(Technique):
    """``distill`` whose teacher is the pipeline's uncompressed input (not registered)."""

    name = "distill"
    family = "distillation"
    needs_calibration = True
    needs_grad = True

    def __init__(self, config: Any, teacher: nn.Module) -> None:
        super().__init__(config)
        self.teacher = teacher

    def apply(self, model: nn.Module, calibration=None) -> Applied:
        from harness.techniques.distillation.distill import distill

        student, notes, figures = distill(self.teacher, calibration, self.config, base=model)
        return Applied(student, ["teacher: the pipeline's uncompressed input model", *notes], figures=figures)


def _merge_figures(into: dict[str, float], figs: dict[str, float]) -> None:
    for k, v in figs.items():
        if k in ("train.steps", "train.tokens", "train.wall_s") and k in into:
            into[k] += v
        elif k == "train.loss_first" and k in into:
            continue  # the first training stage's first loss
        else:
            into[k] = v


@register
class Pipeline(Technique):
    name = "pipeline"
    family = "pipeline"
    config_cls = PipelineConfig
    storage = from_config(lambda cfg: _storage(cfg.stages) if cfg.stages else "dense")
    needs_calibration = from_config(lambda cfg: any(t.needs_calibration for t in _techniques(cfg.stages)))
    uses_calibration = from_config(lambda cfg: any(t.uses_calibration for t in _techniques(cfg.stages)))
    needs_grad = from_config(lambda cfg: any(t.needs_grad for t in _techniques(cfg.stages)))
    requires_cuda = from_config(lambda cfg: any(t.requires_cuda for t in _techniques(cfg.stages)))
    batch_dependence = from_config(lambda cfg: next((f"stage {t.canonical()}: {t.batch_dependence}" for t in
                                                     _techniques(cfg.stages) if t.batch_dependence), None))
    model_kinds = from_config(_kinds)
    suite_specs = ("magnitude:sparsity=0.5 + rtn:bits=4,group=64",)
    description = "stages joined by ' + ' (or a YAML recipe), each on the previous stage's model; stacked formats"

    @property
    def stages(self) -> tuple[Technique, ...]:
        return _techniques(self.config.stages)

    def canonical(self) -> str:
        """The stages' canonical specs joined by `` + `` (with their targets)."""
        return " + ".join(s.text for s in self.config.stages)

    def unsupported_reason(self, device: Any = "cpu", kind: str = "causal-lm") -> str | None:
        for i, (s, t) in enumerate(zip(self.config.stages, self.stages), 1):
            why = t.unsupported_reason(device, kind)
            if why:
                return f"stage {i} ({s.text}): {why}"
        return None

    def apply(self, model: nn.Module, calibration=None) -> Applied:
        if not self.config.stages:
            raise SpecError("an empty pipeline; give stages joined by ' + ' or a recipe file")
        from harness.techniques.finetune import is_causal_lm

        kind = "causal-lm" if is_causal_lm(model) else "encoder"
        techs = self.stages
        last_distill = max((i for i, t in enumerate(techs) if t.name == "distill" and i > 0), default=-1)
        teacher = copy.deepcopy(model).eval() if last_distill > 0 else None
        stacker, observer = Stacker(), stage_observer()
        records: list[dict[str, Any]] = []
        notes: list[str] = []
        figures: dict[str, float] = {}
        cache = None
        for i, (stage, tech) in enumerate(zip(self.config.stages, techs), 1):
            label = f"stage {i} ({stage.text})"
            # targets, plus the factors of low-rank layers split for this stage ((): every layer)
            extra = stacker.before(model, label, tech, stage.targets)
            scope = stage.targets + extra if stage.targets else ()
            before = snapshot(model)
            run = _DistillFrom(tech.config, teacher) if teacher is not None and tech.name == "distill" else tech
            with restrict_targets(model, scope):
                res = run_technique(model, run, calibration, kind=kind)
            model = res.model
            if scope:
                check_untouched(model, before, scope, label)
            stacked = stacker.after(model, label, tech, before)
            if i - 1 == last_distill:
                teacher = None  # free the teacher's memory once no stage needs it
            cache = res.cache_factory or cache
            _merge_figures(figures, res.figures)
            rec: dict[str, Any] = {"stage": i, "spec": stage.text, "technique": tech.name, "storage": tech.storage,
                                   "wall_s": res.wall_s, "peak_rss_mb": res.peak_rss_mb}
            if res.figures:
                rec["figures"] = dict(res.figures)
            if observer is not None:
                rec.update(observer(i, model))
            records.append(rec)
            notes += [f"[{i} {tech.name}] {n}" for n in [*res.notes, *stacked]]
        return Applied(model, notes, cache_factory=cache, figures=figures,
                       extra={"pipeline": self.canonical(), "stages": records})


# -- the stages of specs and recipes ----------------------------------------------------------
def parse_stage(text: str, where: str) -> Stage:
    """One stage text (``name:k=v,...[,targets=P1|P2]``) as a validated Stage; errors name
    ``where`` (the stage and the spec or recipe it is in)."""
    if not text:
        raise SpecError(f"{where}: an empty stage; stages are joined by ' + ' (e.g. 'magnitude + rtn:bits=4')")
    try:
        name, opts = parse_spec(text)
        targets = tuple(p.strip() for p in opts.pop("targets", "").split("|") if p.strip())
        if name == "pipeline":
            raise SpecError("a pipeline stage cannot itself be a pipeline; list its stages instead")
        cls = TECHNIQUES.get(name)  # unknown name: "did you mean"
        cfg = build_config(cls.config_cls, opts, context=f"technique {name!r}")
    except (SpecError, UnknownNameError) as e:
        raise SpecError(f"{where}: {e}") from None
    return Stage(config_to_spec(name, cfg), targets)


__all__ = ["Pipeline", "PipelineConfig", "Stage", "observe_stages", "parse_stage", "split_stages",
           "stage_observer"]
