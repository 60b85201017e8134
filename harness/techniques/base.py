"""The Technique contract and the registry every technique joins.

A technique is a frozen config dataclass plus an ``apply`` that turns a model into a
compressed model. Techniques never measure; they say honestly what their storage is
(``storage``): "packed" (really smaller tensors), "dense" (same bytes), "fake-quant" or
"mask" (simulated; never reported as savings), "structural" (shapes shrank).

Techniques are stateless: one instance may compress any number of models.

- ``apply(model, calibration) -> Applied``: the compressed model (the input may be
  modified in place), the notes that describe this run (they go into the records), and
  optionally a ``cache_factory`` (a callable building the KV cache the model must decode
  with). Returning a bare ``nn.Module`` is accepted and means "no notes, no cache".
- What a technique needs is declared, never discovered while running: ``needs_calibration``,
  ``uses_calibration``, ``needs_grad`` and ``storage`` are class attributes, or
  ``from_config(rule)`` when they depend on the frozen config (e.g. svd needs
  calibration iff its config allocates ranks by measured sensitivity). On the class they
  give the value for the default config (what ``harness techniques`` lists); on an
  instance, the value for its config.
- ``harness.techniques.run.run_technique`` checks the declarations, runs ``apply`` (under
  ``torch.no_grad`` unless ``needs_grad``) and builds the ``CompressionResult``;
  ``harness.techniques.spec`` turns spec strings and recipes into Techniques (``make``).

This module is the contract: it imports nothing else from ``harness.techniques``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, TypeVar

import torch

from harness.config import SpecError, build_config, config_to_dict, config_to_spec
from harness.registry import Registry

Storage = Literal["reference", "packed", "dense", "fake-quant", "mask", "structural", "shared"]
T = TypeVar("T")


class CalibrationRequiredError(ValueError):
    """A technique that needs calibration data was given none."""


class DeviceUnsupportedError(RuntimeError):
    """A technique that cannot run on the requested device (e.g. GPU-only on CPU)."""


@dataclass(frozen=True)
class NoConfig:
    """Config of techniques without options."""


class from_config(Generic[T]):
    """A technique attribute computed from the frozen config by ``rule(config)``.

    ``Technique.attr`` (on the class) is the value for the default config, so listings and
    suite generation read a plain value; ``tech.attr`` is the value for ``tech.config``."""

    def __init__(self, rule: Callable[[Any], T]) -> None:
        self.rule = rule

    def __get__(self, obj: Any, owner: type) -> T:
        return self.rule(owner.config_cls() if obj is None else obj.config)


@dataclass
class Applied:
    """What ``Technique.apply`` returns: the compressed model, notes on this run, and the
    KV-cache factory the model decodes with (None: the model's own cache)."""

    model: torch.nn.Module
    notes: list[str] = field(default_factory=list)
    cache_factory: Callable[[], Any] | None = None
    # Figures of the compression step itself, by registered metric name (a technique that
    # trains reports ``train.steps``, ``train.tokens``, ``train.wall_s``, ``train.loss_*``).
    figures: dict[str, float] = field(default_factory=dict)
    # JSON-safe facts about the run that go into the compress.* records' ``extra`` (a
    # pipeline's per-stage spec, wall time, storage and size).
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class CompressionResult:
    """What ``compress`` returns: the compressed model and how it was obtained."""

    model: torch.nn.Module
    technique: str
    spec: str
    config: Any
    storage: Storage
    wall_s: float = 0.0
    peak_rss_mb: float | None = None  # peak RSS added during compression (harness.peakmem)
    peak_rss_reason: str | None = None  # why peak_rss_mb is None
    notes: list[str] = field(default_factory=list)
    # Builds the KV cache the compressed model must decode with (kv-cache quantization);
    # None: the model's own cache.
    cache_factory: Callable[[], Any] | None = None
    figures: dict[str, float] = field(default_factory=dict)  # Applied.figures (train.*)
    extra: dict[str, Any] = field(default_factory=dict)  # Applied.extra (compress.* records' extra)
    # Technique.batch_dependence: why the model's accuracy figures depend on the eval batch
    # (None: they do not); the evaluation labels those records with it.
    batch_dependence: str | None = None

    @property
    def config_dict(self) -> dict[str, Any]:
        return config_to_dict(self.config)


class Technique:
    """Base class. Subclasses set ``name``, ``config_cls`` and implement ``apply``."""

    name: ClassVar[str] = ""
    # quantization | pruning | lowrank | sharing | distillation | architecture | reference
    family: ClassVar[str] = "other"
    config_cls: ClassVar[type] = NoConfig
    storage: ClassVar[Storage] = "dense"
    needs_calibration: ClassVar[bool] = False
    # Optional calibration: used when given (e.g. structured pruning ranks units by
    # activations), weights-only otherwise. Suites and the CLI pass it when available.
    uses_calibration: ClassVar[bool] = False
    # apply trains or takes gradients: compress runs it with autograd on (else under
    # no_grad). The shared fine-tune loop also switches autograd on for itself.
    needs_grad: ClassVar[bool] = False
    requires_cuda: ClassVar[bool] = False
    model_kinds: ClassVar[tuple[str, ...]] = ("causal-lm", "encoder")
    # Specs the default suite runs for this technique (quick mode uses the first one).
    suite_specs: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    # Why this technique's accuracy figures (ppl, fidelity, task scores) depend on which
    # windows the eval batches together, or None when they do not (every technique the
    # default suite runs gives the same figures at eval batch 1 and 8 within 1e-4:
    # tests/test_batch_invariance.py). A reason labels the records (extra.batch_invariant)
    # and the verdict's note.
    batch_dependence: ClassVar[str | None] = None
    # Bumped when a default or the meaning of an option changes: it joins the resolved key
    # baselines are matched by (``harness.config.resolved_key``), so old numbers never match.
    config_version: ClassVar[int] = 1

    def __init__(self, config: Any | None = None) -> None:
        self.config = config if config is not None else self.config_cls()

    def apply(self, model: torch.nn.Module, calibration: Any | None = None) -> Applied:
        """Compress ``model`` (in place or not) and say how; must not change ``self``."""
        raise NotImplementedError

    def canonical(self) -> str:
        """The canonical spec of this technique (options at their defaults left out)."""
        return config_to_spec(self.name, self.config)

    def unsupported_reason(self, device: str | torch.device = "cpu", kind: str = "causal-lm") -> str | None:
        """Why this technique cannot run here, or None. Suites skip with this reason."""
        if self.requires_cuda and torch.device(device).type != "cuda":
            return f"{self.name} needs a CUDA GPU (device here: {torch.device(device).type})"
        if kind not in self.model_kinds:
            return f"{self.name} does not apply to {kind} models (supports: {', '.join(self.model_kinds)})"
        return None


TECHNIQUES: Registry[type[Technique]] = Registry("technique")


def register(cls: type[Technique]) -> type[Technique]:
    """Class decorator: add a Technique subclass to the registry under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    TECHNIQUES.register(cls.name, cls)
    return cls


def build(name: str, opts: dict[str, str] | None = None) -> Technique:
    """The registered technique ``name`` with its config built from the option strings
    ``opts`` (validated as in a spec; a mistake is a one-line ``SpecError``). One technique,
    never a pipeline: ``harness.techniques.spec.make`` parses specs, pipelines and recipes."""
    cls = TECHNIQUES.get(name)
    return cls(build_config(cls.config_cls, dict(opts or {}), context=f"technique {name!r}"))


def is_spec_error(e: BaseException) -> bool:
    return isinstance(e, (SpecError, ValueError))


__all__ = ["Applied", "Technique", "TECHNIQUES", "register", "build", "CompressionResult",
           "CalibrationRequiredError", "DeviceUnsupportedError", "NoConfig", "dataclasses", "from_config"]
