"""The compress path: run one made Technique on a model and say how it went.

``run_technique`` is the one place a technique's declarations are checked before it runs
(``unsupported_reason`` for the device and model kind, ``needs_calibration``), so every
caller -- ``harness.compress``, ``evaluation.compress_model`` and each pipeline stage --
refuses the same way. It runs ``apply`` under ``torch.no_grad`` unless ``needs_grad``, on
the torch reference forward of the packed layers (the result does not depend on which
kernels the compressing machine has), and builds the ``CompressionResult``.

Spec strings are parsed above this module (``harness.techniques.spec``): here the
technique is already made.
"""
from __future__ import annotations

import copy as _copy
import time
from collections.abc import Callable
from typing import Any

import torch

from harness.layers.exec import reference_forward
from harness.peakmem import PeakTracker
from harness.techniques.base import (
    Applied,
    CalibrationRequiredError,
    CompressionResult,
    DeviceUnsupportedError,
    Technique,
)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def run_technique(model: torch.nn.Module, tech: Technique, calibration: Callable[[], Any] | Any = None, *,
                  kind: str = "causal-lm", device: str | torch.device | None = None,
                  copy: bool = False) -> CompressionResult:
    """Apply ``tech`` to ``model`` (modified in place unless ``copy``: then a deep copy is).

    ``calibration``: the windows, or a function returning them, called only when the
    technique needs or uses calibration. ``device``: where it will run for the
    ``unsupported_reason`` check (default: the model's device). Refusals come before any
    work: ``DeviceUnsupportedError`` (with the technique's reason), then
    ``CalibrationRequiredError``."""
    reason = tech.unsupported_reason(model_device(model) if device is None else device, kind)
    if reason:
        raise DeviceUnsupportedError(reason)
    if callable(calibration):
        calibration = calibration() if tech.needs_calibration or tech.uses_calibration else None
    if tech.needs_calibration and calibration is None:
        raise CalibrationRequiredError(
            f"technique {tech.name!r} needs calibration data; "
            "pass calibration=harness.calibration.get_calibration(...)")
    if copy:
        model = _copy.deepcopy(model)
    with PeakTracker() as mem:  # the high-water mark during compression, not an after-minus-before
        t0 = time.perf_counter()
        with torch.enable_grad() if tech.needs_grad else torch.no_grad(), reference_forward():
            applied = tech.apply(model, calibration)
        wall = time.perf_counter() - t0
    if not isinstance(applied, Applied):  # a technique may return just the model
        applied = Applied(applied)
    applied.model.eval()
    return CompressionResult(model=applied.model, technique=tech.name, spec=tech.canonical(),
                             config=tech.config, storage=tech.storage, wall_s=wall, peak_rss_mb=mem.added_mb,
                             peak_rss_reason=mem.reason,
                             notes=list(applied.notes), cache_factory=applied.cache_factory,
                             figures=dict(applied.figures), extra=dict(applied.extra),
                             batch_dependence=tech.batch_dependence)


__all__ = ["model_device", "run_technique"]
