"""Round-to-nearest (RTN) weight-only quantization into packed QuantLinear layers.

Every linear in the transformer blocks becomes a ``QuantLinear`` holding packed codes,
float16 scales and (asymmetric) uint8 zeros: real storage savings, measured by
``measure.size``. No calibration. On CPU the layers run torch's int4pack/int8pack kernels
(``harness.layers.exec``), on CUDA the Triton kernels; the torch reference dequantizes per call.
"""
from __future__ import annotations

from torch import nn

from harness.calibration import target_linears
from harness.techniques.base import Applied, Technique, register
from harness.techniques.quantization.common import (
    WeightQuantConfig,
    check_config,
    head_notes,
    replace,
    to_quant_linear,
    untie_head,
)


@register
class RTN(Technique):
    name = "rtn"
    family = "quantization"
    config_cls = WeightQuantConfig
    storage = "packed"
    suite_specs = ("rtn:bits=8", "rtn:bits=4,group=128", "rtn:bits=3,group=64", "rtn:bits=2,group=64")
    description = "round-to-nearest weight-only int8/4/3/2, group-wise sym/asym, packed storage"

    def apply(self, model: nn.Module, calibration=None) -> Applied:
        cfg = self.config
        linears = target_linears(model, head=cfg.head)
        check_config(linears, cfg.bits, cfg.group)
        notes = head_notes(model, cfg.head)
        if cfg.head:
            untie_head(model)
        for name, mod in linears.items():
            replace(model, name, to_quant_linear(mod, bits=cfg.bits, group=cfg.group, sym=cfg.sym))
        return Applied(model, ["weight-only; CPU forward: int4pack/int8pack kernels (harness.layers.exec)", *notes])
