"""Fp8Linear: float8 e4m3 weights with one float32 scale per output channel; activations
scaled per tensor at run time; ``torch._scaled_mm`` on GPUs that support it (compute
capability >= 8.9: Ada, Hopper), dequantized matmul otherwise. Made by the ``fp8``
technique (``harness.techniques.quantization.gpu``).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.layers.base import CompressedModule, linear_weight

E4M3_MAX = 448.0


class Fp8Linear(CompressedModule):
    """float8 e4m3 weights, per-output-channel float32 scales."""

    layer_name = "fp8_linear"

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.register_buffer("weight_fp8", torch.zeros(out_features, in_features, dtype=torch.float8_e4m3fn))
        self.register_buffer("w_scales", torch.ones(out_features, dtype=torch.float32))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float16))
        else:
            self.bias = None

    @classmethod
    def from_linear(cls, module: nn.Module) -> Fp8Linear:
        w = linear_weight(module).detach().float()
        b = getattr(module, "bias", None)
        layer = cls(w.shape[1], w.shape[0], b is not None).to(w.device)
        s = (w.abs().amax(1) / E4M3_MAX).clamp(min=1e-12)
        layer.w_scales.copy_(s)
        layer.weight_fp8.copy_((w / s[:, None]).to(torch.float8_e4m3fn))
        if b is not None:
            layer.bias.copy_(b.detach())
        return layer

    def layer_args(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None}

    def logical_params(self) -> int:
        return self.in_features * self.out_features

    def _scaled_mm_ok(self, x: torch.Tensor) -> bool:
        return (x.is_cuda and torch.cuda.get_device_capability(x.device) >= (8, 9)
                and self.in_features % 16 == 0 and self.out_features % 16 == 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        bias = None if self.bias is None else self.bias.to(torch.bfloat16 if x.dtype == torch.float32 else x.dtype)
        if self._scaled_mm_ok(x):
            xs = (x2.abs().amax().float() / E4M3_MAX).clamp(min=1e-12)
            xq = (x2.float() / xs).to(torch.float8_e4m3fn)
            out_dtype = torch.bfloat16 if x.dtype == torch.float32 else x.dtype
            y = torch._scaled_mm(xq, self.weight_fp8.t(), scale_a=xs.reshape(1, 1),
                                 scale_b=self.w_scales.reshape(1, -1), out_dtype=out_dtype, bias=bias)
            return y.to(x.dtype).reshape(*shape[:-1], self.out_features)
        w = self.weight_fp8.float() * self.w_scales[:, None]
        y = F.linear(x2.float(), w, None if self.bias is None else self.bias.float())
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)


__all__ = ["E4M3_MAX", "Fp8Linear"]
