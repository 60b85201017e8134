"""DynamicInt8Linear: int8 per-channel weights, dynamic int8 activations (torch's
fbgemm/x86 dynamic quantized linear) in a ``CompressedModule`` with plain-tensor state.

torch's own dynamic modules keep their weights in an opaque packed object that
safetensors cannot store; here the fbgemm pack is rebuilt lazily from the buffers on the
first forward (and after a reload), so save -> load works and the CPU speed-up is real.
On a device without the quantized engine (CUDA), the forward falls back to dequantized
fp32 math (same numbers up to activation rounding; no speed-up). Made by the
``dynamic-int8`` technique (``harness.techniques.quantization.dynamic``).
"""
from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.layers.base import CompressedModule, linear_weight


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


__all__ = ["DynamicInt8Linear"]
