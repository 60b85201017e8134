"""Dynamic int8 quantization on CPU (torch's fbgemm/x86 dynamic quantized linear).

This is what ``torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, qint8)`` does
(int8 weights, activations quantized per batch at run time, int8 GEMM with fp32 output),
but with per-output-channel weight scales and stored in a ``CompressedModule``
(``DynamicInt8Linear``) whose state is plain tensors: int8 weights, float32 scales, bias.
torch's own dynamic modules keep their weights in an opaque packed object that
safetensors cannot store; here the fbgemm pack is rebuilt lazily from the buffers on the
first forward (and after a reload), so save -> load works and the CPU speed-up is real.
On a device without the quantized engine (CUDA), the forward falls back to dequantized
fp32 math (same numbers up to activation rounding; no speed-up). The layer is
``harness.layers.dynamic``; it is importable from here as before.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from harness.calibration import target_linears
from harness.layers.base import set_module
from harness.layers.dynamic import DynamicInt8Linear
from harness.techniques.base import Applied, Technique, register


@dataclass(frozen=True)
class DynamicInt8Config:
    """head: also quantize the output head (torch's quantize_dynamic does; it is the
    largest single matmul of a small LM's decode step)."""

    head: bool = True


@register
class DynamicInt8(Technique):
    name = "dynamic-int8"
    family = "quantization"
    config_cls = DynamicInt8Config
    storage = "packed"
    suite_specs = ("dynamic-int8",)
    description = "torch dynamic int8 (fbgemm/x86) on CPU: int8 weights + per-batch int8 activations"

    def apply(self, model: nn.Module, calibration=None) -> Applied:
        for name, mod in target_linears(model, scope="all", head=self.config.head).items():
            set_module(model, name, DynamicInt8Linear.from_linear(mod))
        return Applied(model, [f"int8 GEMM via torch.ops.quantized (engine {torch.backends.quantized.engine}) on CPU"])
