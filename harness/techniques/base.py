"""The Technique contract and the registry every technique joins.

A technique is a frozen config dataclass plus an ``apply`` that turns a model into a
compressed model. Techniques never measure; they say honestly what their storage is
(``storage``): "packed" (really smaller tensors), "dense" (same bytes), "fake-quant" or
"mask" (simulated; never reported as savings), "structural" (shapes shrank).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

from harness.config import SpecError, build_config, config_to_dict, config_to_spec, parse_spec
from harness.registry import Registry

Storage = Literal["reference", "packed", "dense", "fake-quant", "mask", "structural", "shared"]


class CalibrationRequiredError(ValueError):
    """A technique that needs calibration data was given none."""


class DeviceUnsupportedError(RuntimeError):
    """A technique that cannot run on the requested device (e.g. GPU-only on CPU)."""


@dataclass(frozen=True)
class NoConfig:
    """Config of techniques without options."""


@dataclass
class CompressionResult:
    """What ``compress`` returns: the compressed model and how it was obtained."""

    model: torch.nn.Module
    technique: str
    spec: str
    config: Any
    storage: Storage
    wall_s: float = 0.0
    peak_rss_mb: float | None = None
    notes: list[str] = field(default_factory=list)

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
    requires_cuda: ClassVar[bool] = False
    model_kinds: ClassVar[tuple[str, ...]] = ("causal-lm", "encoder")
    # Specs the default suite runs for this technique (quick mode uses the first one).
    suite_specs: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""

    def __init__(self, config: Any | None = None) -> None:
        self.config = config if config is not None else self.config_cls()

    def apply(self, model: torch.nn.Module, calibration: Any | None = None) -> torch.nn.Module:
        raise NotImplementedError

    def notes(self) -> list[str]:
        return []

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


def load_all() -> None:
    """Import every technique module so the registry is complete."""
    import harness.techniques  # noqa: F401  (its __init__ imports the catalogue)


def make(spec: str | Technique) -> Technique:
    """Parse a spec string (``"rtn:bits=4,group=128"``) into a configured Technique."""
    if isinstance(spec, Technique):
        return spec
    load_all()
    name, opts = parse_spec(spec)
    cls = TECHNIQUES.get(name)
    cfg = build_config(cls.config_cls, opts, context=f"technique {name!r}")
    return cls(cfg)


def canonical_spec(t: Technique) -> str:
    return config_to_spec(t.name, t.config)


def _rss_mb() -> float | None:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except Exception:  # pragma: no cover
        return None


def compress(model: torch.nn.Module, spec: str | Technique, calibration: Any | None = None, *,
             kind: str = "causal-lm") -> CompressionResult:
    """Apply one technique. The input model may be modified in place; pass a copy to keep it."""
    tech = make(spec)
    dev = next(model.parameters()).device if any(True for _ in model.parameters()) else torch.device("cpu")
    reason = tech.unsupported_reason(dev, kind)
    if reason:
        raise DeviceUnsupportedError(reason)
    if tech.needs_calibration and calibration is None:
        raise CalibrationRequiredError(
            f"technique {tech.name!r} needs calibration data; "
            "pass calibration=harness.calibration.get_calibration(...)")
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    with torch.no_grad() if not getattr(tech, "needs_grad", False) else torch.enable_grad():
        out = tech.apply(model, calibration)
    wall = time.perf_counter() - t0
    rss1 = _rss_mb()
    peak = None if rss0 is None or rss1 is None else max(rss1 - rss0, 0.0)
    out.eval()
    return CompressionResult(model=out, technique=tech.name, spec=canonical_spec(tech),
                             config=tech.config, storage=tech.storage, wall_s=wall,
                             peak_rss_mb=peak, notes=tech.notes())


def is_spec_error(e: BaseException) -> bool:
    return isinstance(e, (SpecError, ValueError))


__all__ = ["Technique", "TECHNIQUES", "register", "make", "compress", "CompressionResult",
           "CalibrationRequiredError", "DeviceUnsupportedError", "NoConfig", "dataclasses"]
