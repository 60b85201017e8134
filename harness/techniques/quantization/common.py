"""Shared pieces of the weight-only quantization techniques: the config, argument checks
and the swap to QuantLinear.

Only the linears inside the transformer blocks are quantized (as in GPTQ, AWQ and
SmoothQuant; ``harness.calibration.target_linears``): embeddings, the output head and
poolers stay in their original precision. ``head=true`` also quantizes the output head:
on small models it holds a large share of the weight bytes (43% on harness-speed), which
decode reads on every token.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from harness.config import SpecError, check
from harness.layers.base import is_linear, linear_weight, set_module
from harness.primitives.quant import QUANT_BITS, check_quant_args


@dataclass(frozen=True)
class WeightQuantConfig:
    """bits: 8, 4, 3 or 2; group: inputs per scale (none = one scale per output channel);
    sym: symmetric (implicit zero) or asymmetric (stored uint8 zero codes); head: also
    quantize the output head (a head tied to the input embedding is untied: the embedding
    keeps its precision and the head is stored packed beside it)."""

    bits: int = 4
    group: int | None = None
    sym: bool = True
    head: bool = False

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


def output_head(model: nn.Module) -> tuple[str, nn.Module] | None:
    """(name, module) of the model's output head when it is a plain linear, else None."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or not is_linear(head):
        return None
    return next((n, m) for n, m in model.named_modules() if m is head)


def head_notes(model: nn.Module, head: bool) -> list[str]:
    """What ``head=`` does, for the record: kept, quantized, or untied and quantized (call
    before the head is replaced)."""
    if not head:
        return ["output head kept in full precision"]
    found = output_head(model)
    if found is None:
        return ["head=true: the model's output head is not a linear layer; it is kept"]
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = emb is not None and getattr(emb, "weight", None) is getattr(found[1], "weight", None)
    return ["output head quantized" + ("; it was tied to the input embedding, which keeps its precision "
                                       "(the head's packed bytes are counted in addition)" if tied else "")]


def untie_head(model: nn.Module) -> None:
    """Stop transformers re-tying a replaced head to the embedding on save/load."""
    cfg = getattr(model, "config", None)
    if cfg is not None and getattr(cfg, "tie_word_embeddings", False):
        cfg.tie_word_embeddings = False
        text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else None
        if text is not None and text is not cfg and getattr(text, "tie_word_embeddings", False):
            text.tie_word_embeddings = False


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
    "head_notes",
    "output_head",
    "untie_head",
    "replace",
    "to_quant_linear",
]
