"""SmoothQuant (Xiao et al. 2023): W8A8 with activation outliers migrated into the weights.

For each group of linears sharing an input, per input channel
``s_j = max|X_j|^alpha / max|W_:j|^(1-alpha)`` (calibration activations; ``alpha`` is the
migration strength). The layers then compute ``(x / s) (W s)^T``: activations become easier
to quantize, weights absorb the range. Weights are int8 per output channel, activations
int8 per token at run time (``W8A8Linear``). The smoothing factors are kept per layer
(float16 [in]) rather than folded into the preceding norm, so every family works.

Honest accounting: storage is real int8 (about 8.1 bits/param with scales); on this CPU
there is no fast int8 GEMM in torch (``_int_mm`` is slower than fp32), so the forward
emulates integer arithmetic in float32 and is *slower* than fp32. The speed-up exists on
GPUs with int8 tensor cores (``torch._int_mm`` on CUDA is used there).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from harness.config import check
from harness.layers.base import linear_weight
from harness.layers.quant import W8A8Linear
from harness.primitives.scales import smooth_scales
from harness.techniques.base import Applied, Technique, register
from harness.techniques.quantization.common import calibration_notes
from harness.techniques.quantization.sequential import quantize_sequential


@dataclass(frozen=True)
class SmoothQuantConfig:
    """alpha: migration strength in [0, 1] (0 = no smoothing of activations, 1 = all of
    the range moved into the weights); the paper uses 0.5 for most models."""

    alpha: float = 0.5

    def __post_init__(self) -> None:
        check(0.0 <= self.alpha <= 1.0, f"alpha={self.alpha} is outside [0, 1]")


@register
class SmoothQuant(Technique):
    name = "smoothquant"
    family = "quantization"
    config_cls = SmoothQuantConfig
    storage = "packed"
    needs_calibration = True
    suite_specs = ("smoothquant:alpha=0.5",)
    description = "SmoothQuant W8A8: int8 weights + dynamic per-token int8 activations after outlier migration"

    def apply(self, model: nn.Module, calibration=None) -> Applied:
        alpha = self.config.alpha

        def quantize_group(mods, stats):
            first = next(iter(stats.values()))
            weights = [linear_weight(m) for m in mods.values()]
            s = smooth_scales(first.abs_max, weights, alpha)
            return {name: W8A8Linear.from_weight(w.detach().float() * s, getattr(m, "bias", None), smooth=s)
                    for (name, m), w in zip(mods.items(), weights)}

        quantize_sequential(model, calibration, quantize_group, hessian=False)
        return Applied(model, calibration_notes(calibration) + [
            "W8A8 emulated in float32 on CPU (no int8 GEMM speed-up here); torch._int_mm on CUDA"])
