"""The reference: no compression. Every comparison is against this."""
from __future__ import annotations

import torch

from harness.techniques.base import Applied, Technique, register


@register
class NoCompression(Technique):
    name = "none"
    family = "reference"
    storage = "reference"
    suite_specs = ("none",)
    description = "uncompressed reference model"

    def apply(self, model: torch.nn.Module, calibration=None) -> Applied:
        return Applied(model)
