"""Shared pieces of the weight-only quantization techniques: the config, argument checks
and the swap to QuantLinear.

Only the linears inside the transformer blocks are quantized (as in GPTQ, AWQ and
SmoothQuant; ``harness.calibration.target_linears``): embeddings, the output head and
poolers stay in their original precision.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from harness.config import SpecError, check
from harness.layers.base import linear_weight, set_module
from harness.primitives.quant import QUANT_BITS, check_quant_args


@dataclass(frozen=True)
class WeightQuantConfig:
    """bits: 8, 4, 3 or 2; group: inputs per scale (none = one scale per output channel);
    sym: symmetric (implicit zero) or asymmetric (stored uint8 zero codes)."""

    bits: int = 4
    group: int | None = None
    sym: bool = True

    def __post_init__(self) -> None:
        check(self.bits in QUANT_BITS,
              f"bits={self.bits} is not supported; choose one of {', '.join(map(str, QUANT_BITS))}")
        check(self.group is None or self.group >= 1,
              f"group={self.group} must be a positive integer or none (per output channel)")


def check_groups(linears: dict[str, nn.Module], group: int | None) -> None:
    """Fail before touching the model on a group size no layer can use (``group < 1``).

    Any positive group works for every layer: a group that does not divide a layer's
    ``in_features`` leaves a ragged last group of ``in_features % group`` inputs, and a group
    wider than the layer is one group per row (see ``uniform``). ``linears`` is kept for
    callers that validate per layer.
    """
    if group is not None and group < 1:
        raise SpecError(f"group={group} must be a positive integer or none (per output channel)")


def check_config(linears: dict[str, nn.Module], bits: int, group: int | None) -> None:
    check_quant_args(bits, None)
    check_groups(linears, group)


def to_quant_linear(mod: nn.Module, weight: torch.Tensor | None = None, *, bits: int, group: int | None,
                    sym: bool, codes=None, input_scale: torch.Tensor | None = None) -> nn.Module:
    """A QuantLinear for ``mod`` (weight overridable, e.g. after GPTQ's updates)."""
    from harness.layers.quant import QuantLinear

    w = linear_weight(mod).detach() if weight is None else weight
    return QuantLinear.from_weight(w, getattr(mod, "bias", None), bits=bits, group=group, sym=sym,
                                   codes=codes, input_scale=input_scale)


def replace(model: nn.Module, name: str, new: nn.Module) -> None:
    set_module(model, name, new)


def calibration_notes(calibration) -> list[str]:
    """Human-readable calibration record for CompressionResult.notes."""
    if calibration is None:
        return []
    d = calibration.describe() if hasattr(calibration, "describe") else {}
    return [", ".join(f"{k}={v}" for k, v in d.items())] if d else []


__all__ = [
    "WeightQuantConfig",
    "calibration_notes",
    "check_config",
    "check_groups",
    "replace",
    "to_quant_linear",
]
