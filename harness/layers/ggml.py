"""GGUF tensors kept as the file stores them: K-quants (Q4_K, Q5_K, Q6_K ...), Q5_x, F16/BF16
and every other type that no harness packed format holds exactly.

Stored: ``blocks`` uint8 ``[rows, bytes_per_row]``, the file's bytes unchanged (a GGUF row
is one output row of a linear layer, or one token's embedding), so ``state_dict`` and
``measure.size`` count exactly the GGUF tensor bytes. ``qtype`` is the ggml type's name.
The weight is decoded by the ``gguf`` package's reference dequantizer (numpy, float32):
the linear layer decodes once into a dense float32 cache that ``memory.model_mb`` counts
(``_kc_w``, see ``harness.layers.base``; per call on the torch reference), the embedding
decodes only the rows it looks up. Needs ``pip install gguf``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from harness.layers.base import DTYPES, LABELS, Cache, CompressedModule, Plan, dtype_name, planner
from harness.layers.exec import cpu_forward

INSTALL = "pip install gguf  (or the extra: pip install 'llm-compression-harness[formats]')"
DENSE_F32 = "dense-f32 cache (gguf reference dequantize)"
LABELS["gguf_embedding"] = "gguf reference dequantize of the looked-up rows (embedding)"


def _gguf():
    try:
        import gguf
    except ImportError:
        raise ImportError(f"GGUF block layers need the gguf package: {INSTALL}") from None
    return gguf


def qtype_of(name: str):
    """The ``gguf.GGMLQuantizationType`` called ``name`` (one-line error otherwise)."""
    types = _gguf().GGMLQuantizationType
    if name not in types.__members__:
        raise ValueError(f"unknown ggml type {name!r}")
    return types[name]


def row_bytes(qtype: str, width: int) -> int:
    """Bytes of one GGUF row of ``width`` values of type ``qtype``."""
    block, size = _gguf().GGML_QUANT_SIZES[qtype_of(qtype)]
    if width % block:
        raise ValueError(f"a {qtype} row holds a multiple of {block} values, not {width}")
    return width // block * size


def decode(blocks: torch.Tensor, qtype: str, width: int) -> torch.Tensor:
    """gguf's reference dequantization of ``blocks`` ``[rows, bytes]``: float32 ``[rows, width]``."""
    w = _gguf().dequantize(blocks.detach().cpu().numpy(), qtype_of(qtype))
    return torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32).reshape(-1, width)).to(blocks.device)


class GGUFLinear(CompressedModule):
    """A linear layer whose weight is a GGUF tensor's blocks, decoded by gguf's reference."""

    layer_name = "gguf_linear"

    def __init__(self, in_features: int, out_features: int, qtype: str, bias: bool = False,
                 bias_dtype: str = "float32") -> None:
        super().__init__()
        self.in_features, self.out_features, self.qtype = int(in_features), int(out_features), str(qtype)
        self.register_buffer("blocks", torch.zeros(out_features, row_bytes(qtype, in_features), dtype=torch.uint8))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=DTYPES[bias_dtype]))
        else:
            self.bias = None

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dense ``[out, in]`` weight, exactly gguf's reference dequantization."""
        return decode(self.blocks, self.qtype, self.in_features).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (y := cpu_forward(self, x)) is not None:  # the float32 cache (planner below)
            return y
        return F.linear(x, self.dequantize(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def layer_args(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features, "qtype": self.qtype,
                "bias": self.bias is not None,
                "bias_dtype": dtype_name(self.bias.dtype) if self.bias is not None else "float32"}

    def logical_params(self) -> int:
        return self.in_features * self.out_features

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, qtype={self.qtype}"


@planner("gguf_linear")
def _gguf_plan(m: GGUFLinear) -> Plan:
    def build(g: GGUFLinear) -> Cache:
        return {"w": g.dequantize(torch.float32).contiguous()}

    def run(g: GGUFLinear, x: torch.Tensor, c: Cache) -> torch.Tensor:
        return F.linear(x, c["w"].to(x.dtype), None if g.bias is None else g.bias.to(x.dtype))
    return Plan(DENSE_F32, {"int4pack-bf16": f"{m.qtype} blocks are not (q - z) * s at one group size"}, build, run)


class GGUFEmbedding(CompressedModule):
    """A token embedding whose table is a GGUF tensor's blocks (one row per token)."""

    layer_name = "gguf_embedding"

    def __init__(self, num_embeddings: int, embedding_dim: int, qtype: str, dtype: str = "float32") -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.qtype = int(num_embeddings), int(embedding_dim), str(qtype)
        self.dtype = DTYPES[dtype]
        self.register_buffer("blocks", torch.zeros(num_embeddings, row_bytes(qtype, embedding_dim),
                                                   dtype=torch.uint8))

    def dequantize(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Dense ``[n, dim]`` rows (all of them for ``rows=None``)."""
        b = self.blocks if rows is None else self.blocks[rows]
        return decode(b, self.qtype, self.embedding_dim).to(self.dtype)

    @property
    def weight(self) -> torch.Tensor:
        """Dense view for code that reads ``.weight`` (a fresh tensor, not storage)."""
        return self.dequantize()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.dequantize(input_ids.reshape(-1)).reshape(*input_ids.shape, self.embedding_dim)

    def layer_args(self) -> dict[str, Any]:
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim, "qtype": self.qtype,
                "dtype": dtype_name(self.dtype)}

    def logical_params(self) -> int:
        return self.num_embeddings * self.embedding_dim

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, qtype={self.qtype}"


__all__ = ["DENSE_F32", "GGUFEmbedding", "GGUFLinear", "decode", "qtype_of", "row_bytes"]
