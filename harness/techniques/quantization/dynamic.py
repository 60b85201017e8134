"""Dynamic int8 quantization: int8 weights per output channel, activations quantized to
int8 at run time. Two activation granularities (``act``):

- ``per-token`` (the default, W8A8): each token's activations get their own scale
  (absmax / 127, symmetric int8), computed in the forward (``W8A8Linear``, the layer
  SmoothQuant uses, without smoothing). On CPU the integer matmul runs through torch's
  int8pack kernel (``harness.layers.exec``: int8 activations fed as bf16, exact integers,
  scales applied in fp32); torch._int_mm on CUDA. A token's output does not depend on the
  other tokens of the batch, so its figures do not depend on the eval batching.
- ``per-tensor``: what ``torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, qint8)``
  does (torch's fbgemm/x86 dynamic quantized linear: one activation scale per call,
  shared by every token of every sequence in the batch, 7-bit range), stored in a
  ``CompressedModule`` (``DynamicInt8Linear``) whose state is plain tensors. It is fast on
  CPU, but one outlier token (SmolLM2's down_proj inputs reach 2000x the median token's
  largest value) crushes the resolution of every other token in the batch, and a window's
  perplexity depends on which windows are batched with it: the technique says so
  (``batch_dependence``), and its records and verdicts carry the label.

The per-tensor layer is ``harness.layers.dynamic``; it is importable from here as before.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from harness.calibration import target_linears
from harness.config import check
from harness.layers.base import linear_weight, set_module
from harness.layers.dynamic import DynamicInt8Linear
from harness.layers.quant import W8A8Linear
from harness.techniques.base import Applied, Technique, from_config, register

ACTS = ("per-token", "per-tensor")
PER_TENSOR_BATCHING = ("one activation scale per call, shared by every token of every window in the eval batch: "
                       "a window's figures depend on the windows batched with it")


@dataclass(frozen=True)
class DynamicInt8Config:
    """act: activation scale granularity, ``per-token`` (W8A8: one scale per token) or
    ``per-tensor`` (torch's quantize_dynamic: one scale per call, shared by the batch).
    head: also quantize the output head (torch's quantize_dynamic does; it is the
    largest single matmul of a small LM's decode step)."""

    act: str = "per-token"
    head: bool = True

    def __post_init__(self) -> None:
        check(self.act in ACTS, f"act={self.act!r}: choose one of {', '.join(ACTS)}")


def quantize_linear(module: nn.Module, act: str = "per-token") -> nn.Module:
    """One linear as int8 per-channel weights with dynamic int8 activations of ``act``."""
    if act == "per-tensor":
        return DynamicInt8Linear.from_linear(module)
    return W8A8Linear.from_weight(linear_weight(module).detach().float(), getattr(module, "bias", None))


@register
class DynamicInt8(Technique):
    name = "dynamic-int8"
    family = "quantization"
    config_cls = DynamicInt8Config
    storage = "packed"
    suite_specs = ("dynamic-int8",)
    description = ("dynamic int8: int8 per-channel weights + int8 activations scaled per token at run time "
                   "(act=per-tensor: torch's fbgemm quantize_dynamic, one scale per batch)")
    # v2: the default activation scale is per token (W8A8Linear, int8pack on CPU); v1 was
    # torch's per-tensor quantize_dynamic, still there as act=per-tensor.
    config_version = 2
    batch_dependence = from_config(lambda cfg: PER_TENSOR_BATCHING if cfg.act == "per-tensor" else None)

    def apply(self, model: nn.Module, calibration=None) -> Applied:
        act = self.config.act
        for name, mod in target_linears(model, scope="all", head=self.config.head).items():
            set_module(model, name, quantize_linear(mod, act))
        if act == "per-tensor":
            return Applied(model, [f"int8 GEMM via torch.ops.quantized (engine {torch.backends.quantized.engine}) "
                                   "on CPU; one activation scale per call (per-tensor, shared by the batch)"])
        return Applied(model, ["W8A8: int8 weights per output channel, int8 activations per token (absmax/127) "
                               "at run time; int8pack kernel on CPU (torch._int_mm on CUDA)"])
