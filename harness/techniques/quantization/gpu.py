"""GPU-only quantization: bitsandbytes LLM.int8 and NF4, and fp8 (e4m3).

All three declare ``requires_cuda``: on a CPU, ``compress`` raises DeviceUnsupportedError
and suites skip with that reason. ``bnb-*`` also need the ``bitsandbytes`` package (an
optional dependency); without it they fail with a one-line error naming the install.

- ``bnb-int8``: ``bitsandbytes.nn.Linear8bitLt`` (LLM.int8 with outlier threshold 6.0).
- ``bnb-nf4``: ``bitsandbytes.nn.Linear4bit`` with NF4 and fp16 compute.
- ``fp8``: ``Fp8Linear``: e4m3 weights with one float32 scale per output channel;
  activations scaled per tensor at run time; ``torch._scaled_mm`` on GPUs that support it
  (compute capability >= 8.9: Ada, Hopper), dequantized matmul otherwise.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.layers.base import CompressedModule, linear_weight, set_module
from harness.techniques.base import DeviceUnsupportedError, Technique, register
from harness.techniques.quantization.common import block_linears_by_name

E4M3_MAX = 448.0


def _bnb():
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise DeviceUnsupportedError("bitsandbytes is not installed; pip install bitsandbytes (CUDA only)") from None
    return bnb


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


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


class _GPUTechnique(Technique):
    family = "quantization"
    requires_cuda = True
    storage = "packed"

    def _check(self, model: nn.Module) -> None:
        if _device(model).type != "cuda":
            raise DeviceUnsupportedError(f"{self.name} needs the model on a CUDA GPU (it is on {_device(model).type})")


@register
class BnbInt8(_GPUTechnique):
    name = "bnb-int8"
    suite_specs = ("bnb-int8",)
    description = "bitsandbytes LLM.int8 (CUDA): int8 weights, fp16 outlier columns"

    def apply(self, model: nn.Module, calibration=None) -> nn.Module:
        self._check(model)
        bnb = _bnb()
        for name, mod in block_linears_by_name(model).items():
            w = linear_weight(mod).detach()
            b = getattr(mod, "bias", None)
            new = bnb.nn.Linear8bitLt(w.shape[1], w.shape[0], bias=b is not None, has_fp16_weights=False,
                                      threshold=6.0)
            new.weight = bnb.nn.Int8Params(w.half().cpu().contiguous(), requires_grad=False, has_fp16_weights=False)
            if b is not None:
                new.bias = nn.Parameter(b.detach().half(), requires_grad=False)
            set_module(model, name, new.to(w.device))
        return model

    def notes(self) -> list[str]:
        return ["bitsandbytes modules are not CompressedModules: harness save/load does not cover them"]


@register
class BnbNF4(_GPUTechnique):
    name = "bnb-nf4"
    suite_specs = ("bnb-nf4",)
    description = "bitsandbytes NF4 (CUDA): 4-bit NormalFloat weights, blockwise absmax"

    def apply(self, model: nn.Module, calibration=None) -> nn.Module:
        self._check(model)
        bnb = _bnb()
        for name, mod in block_linears_by_name(model).items():
            w = linear_weight(mod).detach()
            b = getattr(mod, "bias", None)
            new = bnb.nn.Linear4bit(w.shape[1], w.shape[0], bias=b is not None, compute_dtype=torch.float16,
                                    quant_type="nf4")
            new.weight = bnb.nn.Params4bit(w.half().cpu().contiguous(), requires_grad=False, quant_type="nf4")
            if b is not None:
                new.bias = nn.Parameter(b.detach().half(), requires_grad=False)
            set_module(model, name, new.to(w.device))
        return model

    def notes(self) -> list[str]:
        return ["bitsandbytes modules are not CompressedModules: harness save/load does not cover them"]


@register
class FP8(_GPUTechnique):
    name = "fp8"
    suite_specs = ("fp8",)
    description = "fp8 e4m3 weights (per-channel scales), torch._scaled_mm on sm_89+ GPUs"

    def apply(self, model: nn.Module, calibration=None) -> nn.Module:
        self._check(model)
        for name, mod in block_linears_by_name(model).items():
            set_module(model, name, Fp8Linear.from_linear(mod))
        return model

    def notes(self) -> list[str]:
        return ["fp8 matmul via torch._scaled_mm (bfloat16 output for fp32 inputs) where supported"]
