"""GPU-only quantization: bitsandbytes LLM.int8 and NF4, and fp8 (e4m3).

All three declare ``requires_cuda``: on a CPU, ``compress`` raises DeviceUnsupportedError
and suites skip with that reason. ``bnb-*`` also need the ``bitsandbytes`` package (an
optional dependency); without it they fail with a one-line error naming the install.

- ``bnb-int8``: ``bitsandbytes.nn.Linear8bitLt`` (LLM.int8 with outlier threshold 6.0).
- ``bnb-nf4``: ``bitsandbytes.nn.Linear4bit`` with NF4 and fp16 compute.
- ``fp8``: ``Fp8Linear`` (``harness.layers.fp8``): e4m3 weights with one float32 scale per output channel;
  activations scaled per tensor at run time; ``torch._scaled_mm`` on GPUs that support it
  (compute capability >= 8.9: Ada, Hopper), dequantized matmul otherwise.
"""
from __future__ import annotations

import torch
from torch import nn

from harness.calibration import target_linears
from harness.layers.base import linear_weight, set_module
from harness.layers.fp8 import E4M3_MAX, Fp8Linear  # noqa: F401  (re-exported)
from harness.techniques.base import Applied, DeviceUnsupportedError, Technique, register


def _bnb():
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise DeviceUnsupportedError("bitsandbytes is not installed; pip install bitsandbytes (CUDA only)") from None
    return bnb


_BNB_NOTE = "bitsandbytes modules are not CompressedModules: harness save/load does not cover them"


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


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

    def apply(self, model: nn.Module, calibration=None) -> Applied:
        self._check(model)
        bnb = _bnb()
        return _swap_bnb(model, lambda w, has_bias: bnb.nn.Linear8bitLt(
            w.shape[1], w.shape[0], bias=has_bias, has_fp16_weights=False, threshold=6.0),
            lambda w: bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False))


def _swap_bnb(model: nn.Module, make_layer, make_weight) -> Applied:
    """Replace every block linear with a bitsandbytes layer holding its fp16 weight (bnb
    quantizes it when the layer moves to the GPU) and its fp16 bias."""
    for name, mod in target_linears(model).items():
        w = linear_weight(mod).detach()
        b = getattr(mod, "bias", None)
        new = make_layer(w, b is not None)
        new.weight = make_weight(w.half().cpu().contiguous())
        if b is not None:
            new.bias = nn.Parameter(b.detach().half(), requires_grad=False)
        set_module(model, name, new.to(w.device))
    return Applied(model, [_BNB_NOTE])


@register
class BnbNF4(_GPUTechnique):
    name = "bnb-nf4"
    suite_specs = ("bnb-nf4",)
    description = "bitsandbytes NF4 (CUDA): 4-bit NormalFloat weights, blockwise absmax"

    def apply(self, model: nn.Module, calibration=None) -> Applied:
        self._check(model)
        bnb = _bnb()
        return _swap_bnb(model, lambda w, has_bias: bnb.nn.Linear4bit(
            w.shape[1], w.shape[0], bias=has_bias, compute_dtype=torch.float16, quant_type="nf4"),
            lambda w: bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4"))


@register
class FP8(_GPUTechnique):
    name = "fp8"
    suite_specs = ("fp8",)
    description = "fp8 e4m3 weights (per-channel scales), torch._scaled_mm on sm_89+ GPUs"

    def apply(self, model: nn.Module, calibration=None) -> Applied:
        self._check(model)
        for name, mod in target_linears(model).items():
            set_module(model, name, Fp8Linear.from_linear(mod))
        return Applied(model, ["fp8 matmul via torch._scaled_mm (bfloat16 output for fp32 inputs) where supported"])
