"""Dynamic int8 quantization on CPU (torch's fbgemm/x86 dynamic quantized linear).

This is what ``torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, qint8)`` does
(int8 weights, activations quantized per batch at run time, int8 GEMM with fp32 output),
but with per-output-channel weight scales and stored in a ``CompressedModule``
(``DynamicInt8Linear``) whose state is plain tensors: int8 weights, float32 scales, bias.
torch's own dynamic modules keep their weights in an opaque packed object that
safetensors cannot store; here the fbgemm pack is rebuilt lazily from the buffers on the
first forward (and after a reload), so save -> load works and the CPU speed-up is real.
On a device without the quantized engine (CUDA), the forward falls back to dequantized
fp32 math (same numbers up to activation rounding; no speed-up).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.layers.base import CompressedModule, is_linear, linear_weight, set_module
from harness.techniques.base import Technique, register


class DynamicInt8Linear(CompressedModule):
    """int8 per-channel weights; dynamic int8 activations via torch.ops.quantized on CPU."""

    layer_name = "dynamic_int8_linear"

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("w_scales", torch.ones(out_features, dtype=torch.float32))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32))
        else:
            self.bias = None
        self._packed: tuple[Any, ...] | None = None

    @classmethod
    def from_linear(cls, module: nn.Module) -> DynamicInt8Linear:
        w = linear_weight(module).detach().float()
        b = getattr(module, "bias", None)
        layer = cls(w.shape[1], w.shape[0], b is not None)
        s = (w.abs().amax(1) / 127).clamp(min=1e-8)
        layer.w_scales.copy_(s)
        layer.qweight.copy_(torch.round(w / s[:, None]).clamp(-127, 127).to(torch.int8))
        if b is not None:
            layer.bias.copy_(b.detach().float())
        return layer

    def layer_args(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None}

    def logical_params(self) -> int:
        return self.in_features * self.out_features

    def _pack(self):
        key = (self.qweight.data_ptr(), self.w_scales.data_ptr(), None if self.bias is None else self.bias.data_ptr())
        if self._packed is None or self._packed[0] != key:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # quantized-tensor creation deprecation notice
                qw = torch._make_per_channel_quantized_tensor(
                    self.qweight, self.w_scales.double(), torch.zeros(self.out_features, dtype=torch.long), 0)
                self._packed = (key, torch.ops.quantized.linear_prepack(qw, self.bias))
        return self._packed[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":
            shape = x.shape
            y = torch.ops.quantized.linear_dynamic(x.reshape(-1, self.in_features).float(), self._pack(), True)
            return y.to(x.dtype).reshape(*shape[:-1], self.out_features)
        w = self.qweight.float() * self.w_scales[:, None]
        return F.linear(x, w.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


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

    def apply(self, model: nn.Module, calibration=None) -> nn.Module:
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        for name, mod in list(model.named_modules()):
            if is_linear(mod) and (self.config.head or mod is not head):
                set_module(model, name, DynamicInt8Linear.from_linear(mod))
        return model

    def notes(self) -> list[str]:
        return [f"int8 GEMM via torch.ops.quantized (engine {torch.backends.quantized.engine}) on CPU"]
