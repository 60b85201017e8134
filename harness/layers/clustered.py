"""ClusteredLinear: weight clustering (Deep Compression style) with really packed indices.

Each weight is replaced by the nearest of ``clusters`` shared values (a per-layer
codebook, k-means on the weights). Stored tensors (registered buffers):

- ``indices`` uint8 ``[out, packed(in, bits)]``: cluster ids packed along the input dim,
  ``bits`` = the smallest of 2/3/4/8 with ``2**bits >= clusters``;
- ``codebook`` float16 ``[clusters]``;
- ``bias`` optional, original dtype.

The forward looks the codes up in the codebook and runs a dense matmul (torch
reference): storage shrinks, CPU time does not.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from harness.config import SpecError
from harness.layers.base import CompressedModule
from harness.layers.lowrank import _DTYPES, dtype_name
from harness.layers.packing import SUPPORTED_BITS, pack, packed_width, unpack


def index_bits(clusters: int) -> int:
    """Packed width per index for ``clusters`` codebook entries."""
    if not 2 <= clusters <= 256:
        raise SpecError(f"clusters={clusters} is not allowed; choose 2 <= clusters <= 256")
    need = max(1, math.ceil(math.log2(clusters)))
    return next(b for b in SUPPORTED_BITS if b >= need)


class ClusteredLinear(CompressedModule):
    """Codebook + packed indices linear layer (drop-in for nn.Linear / GPT-2 Conv1D)."""

    layer_name = "clustered_linear"

    def __init__(self, in_features: int, out_features: int, clusters: int = 16, bias: bool = False,
                 bias_dtype: str = "float32") -> None:
        super().__init__()
        self.in_features, self.out_features, self.clusters = int(in_features), int(out_features), int(clusters)
        self.bits = index_bits(clusters)
        self.register_buffer("indices", torch.zeros(out_features, packed_width(in_features, self.bits),
                                                    dtype=torch.uint8))
        self.register_buffer("codebook", torch.zeros(clusters, dtype=torch.float16))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=_DTYPES[bias_dtype]))
        else:
            self.bias = None

    @classmethod
    def from_assignment(cls, idx: torch.Tensor, codebook: torch.Tensor,
                        bias: torch.Tensor | None = None) -> ClusteredLinear:
        out_f, in_f = idx.shape
        layer = cls(in_f, out_f, int(codebook.numel()), bias=bias is not None,
                    bias_dtype=dtype_name(bias.dtype) if bias is not None else "float32")
        layer.to(idx.device)
        layer.indices.copy_(pack(idx.to(torch.uint8), layer.bits))
        layer.codebook.copy_(codebook.to(torch.float16))
        if bias is not None:
            layer.bias.copy_(bias.detach())
        return layer

    def layer_args(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features, "clusters": self.clusters,
                "bias": self.bias is not None,
                "bias_dtype": dtype_name(self.bias.dtype) if self.bias is not None else "float32"}

    def logical_params(self) -> int:
        return self.in_features * self.out_features

    def dense_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        idx = unpack(self.indices, self.bits, self.in_features).long()
        return self.codebook.to(dtype)[idx]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dense_weight(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, clusters={self.clusters}, bits={self.bits}"


__all__ = ["ClusteredLinear", "index_bits"]
