"""Spec strings at the edge: the one module that turns what a user wrote into a Technique.

- ``make(spec)``: ``"rtn:bits=4,group=128"`` (one registered technique, ``base.build``),
  ``"a:... + b:..."`` or one stage with ``targets=`` (a ``pipeline``, ``techniques.pipeline``)
  or a recipe file ``path.yaml`` (``techniques.recipe``). A Technique is returned as it is,
  so a caller that made one passes it on and the spec is parsed once.
- ``canonical_spec``: the canonical spec of a Technique or a spec string (options at their
  defaults left out, a pipeline's stages joined by `` + ``).
- ``compress(model, spec_or_technique, calibration)``: ``make`` then the compress path
  (``techniques.run.run_technique``, where the declarations are checked).
- ``load_all``: import every technique family so ``TECHNIQUES`` is complete; the families
  whose optional third-party dependency is missing are in ``IMPORT_ERRORS``.

This module sits above ``base``, ``pipeline``, ``recipe`` and ``run``; none of them imports it.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from harness.config import SpecError, parse_spec
from harness.techniques.base import TECHNIQUES, CompressionResult, Technique, build
from harness.techniques.pipeline import Pipeline, PipelineConfig, parse_stage, split_stages
from harness.techniques.recipe import load_recipe
from harness.techniques.run import run_technique

RECIPE_SUFFIXES = (".yaml", ".yml")

FAMILIES = [
    "harness.techniques.reference",
    "harness.techniques.quantization",
    "harness.techniques.pruning",
    "harness.techniques.lowrank",
    "harness.techniques.sharing",
    "harness.techniques.architecture",
    "harness.techniques.distillation",
    "harness.techniques.embedding",
    "harness.techniques.pipeline",
]

# {family module: why it is missing} for families whose optional dependency is not
# installed (``harness techniques`` reports them); filled by ``load_all``.
IMPORT_ERRORS: dict[str, str] = {}
_loaded = False


def import_families(modules: list[str]) -> dict[str, str]:
    """Import each family module; returns {module: error} for those whose optional
    third-party dependency is missing. A missing harness module (a family listed here that
    does not exist, or a broken import inside one) is raised: that is a bug, not an option."""
    errors: dict[str, str] = {}
    for mod in modules:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name is None or e.name.split(".")[0] == "harness":
                raise
            errors[mod] = str(e)
    return errors


def load_all() -> dict[str, str]:
    """Import every technique family (once) so the registry is complete; returns
    ``IMPORT_ERRORS``."""
    global _loaded
    if not _loaded:
        _loaded = True  # a family that makes a technique while it is imported does not start over
        try:
            IMPORT_ERRORS.update(import_families(FAMILIES))
        except BaseException:
            _loaded = False
            raise
    return IMPORT_ERRORS


def is_recipe_path(s: str) -> bool:
    """A recipe path ends in .yaml/.yml and is not a technique spec whose last option value
    happens to (``mixed:...,recipe_out=map.yaml``)."""
    if not s.lower().endswith(RECIPE_SUFFIXES):
        return False
    try:
        name, _ = parse_spec(s)
    except SpecError:
        return True
    return name not in TECHNIQUES.names() or Path(s).is_file()


def is_pipeline_spec(spec: Any) -> bool:
    """A recipe path, a spec of two or more stages, or one stage with ``targets=``."""
    if not isinstance(spec, str):
        return False
    s = spec.strip()
    if is_recipe_path(s) or len(split_stages(s)) > 1:
        return True
    try:
        return "targets" in parse_spec(s)[1]
    except SpecError:
        return False


def make_pipeline(spec: str) -> Pipeline:
    """A Pipeline from a spec of ``+``-joined stages or from a recipe path."""
    s = spec.strip()
    if is_recipe_path(s):
        return load_recipe(s)
    stages = tuple(parse_stage(t, f"stage {i} of {spec!r}") for i, t in enumerate(split_stages(s), 1))
    return Pipeline(PipelineConfig(stages))


def make(spec: str | Technique) -> Technique:
    """Parse a spec string (``"rtn:bits=4,group=128"``) into a configured Technique; a
    pipeline (``"a:... + b:..."``) or a recipe file (``path.yaml``) gives a ``pipeline``."""
    if isinstance(spec, Technique):
        return spec
    load_all()
    if is_pipeline_spec(spec):
        return make_pipeline(spec)
    return build(*parse_spec(spec))


def canonical_spec(t: str | Technique) -> str:
    """The canonical spec (``Technique.canonical``) of a Technique or a spec string."""
    return make(t).canonical()


def compress(model: torch.nn.Module, spec: str | Technique, calibration: Any | None = None, *,
             kind: str = "causal-lm", device: str | torch.device | None = None,
             copy: bool = False) -> CompressionResult:
    """Apply one technique (a spec string, a recipe path or a made Technique). The input
    model is modified in place unless ``copy``. ``calibration`` may be a function, called
    only when the technique needs or uses calibration; ``device`` (default: the model's)
    is where ``unsupported_reason`` is asked about."""
    return run_technique(model, make(spec), calibration, kind=kind, device=device, copy=copy)


__all__ = ["FAMILIES", "IMPORT_ERRORS", "RECIPE_SUFFIXES", "canonical_spec", "compress", "is_pipeline_spec",
           "is_recipe_path", "load_all", "make", "make_pipeline"]
