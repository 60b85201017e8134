"""QuantEmbedding: a token-embedding table stored as packed group-wise integer codes.

On small models the embedding table is a large share of the bytes (half of harness-tiny
with its untied head), and no linear-layer quantizer touches it. Stored (registered
buffers, so ``state_dict`` is exactly what ships): ``qweight`` uint8
``[num_embeddings, packed(dim)]`` (``primitives.packing`` layout, one row per token),
``scales`` float16 ``[num_embeddings, ceil(dim/group)]`` and, when asymmetric, ``zeros``
uint8 of the same shape. The forward gathers the looked-up rows and dequantizes only
those (llama.cpp stores ``token_embd`` the same way: per-row blocks of codes + scales).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harness.layers.base import DTYPES, LABELS, CompressedModule, dtype_name
from harness.primitives.packing import pack, packed_width, unpack
from harness.primitives.quant import check_quant_args, dequantize_groupwise, n_groups, quantize_groupwise

LABELS["quant_embedding"] = "torch row gather + dequantize (embedding)"


class QuantEmbedding(CompressedModule):
    """Packed int2/3/4/8 embedding table (drop-in for nn.Embedding without max_norm)."""

    layer_name = "quant_embedding"

    def __init__(self, num_embeddings: int, embedding_dim: int, bits: int = 4, group: int | None = 64,
                 sym: bool = True, padding_idx: int | None = None, dtype: str = "float32") -> None:
        super().__init__()
        check_quant_args(bits, group, embedding_dim)
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        self.bits, self.group, self.sym = int(bits), (None if group is None else int(group)), bool(sym)
        self.padding_idx, self.dtype = padding_idx, DTYPES[dtype]
        ng = n_groups(embedding_dim, group)
        self.register_buffer("qweight", torch.zeros(num_embeddings, packed_width(embedding_dim, bits),
                                                    dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(num_embeddings, ng, dtype=torch.float16))
        if sym:
            self.zeros = None
        else:
            self.register_buffer("zeros", torch.zeros(num_embeddings, ng, dtype=torch.uint8))

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, *, bits: int = 4, group: int | None = 64,
                       sym: bool = True) -> QuantEmbedding:
        """Round-to-nearest quantize each row of ``emb.weight`` in groups of ``group``."""
        if emb.max_norm is not None:
            raise ValueError("an embedding with max_norm renormalizes its rows at lookup; it cannot be packed")
        w = emb.weight.detach()
        layer = cls(w.shape[0], w.shape[1], bits, group, sym, emb.padding_idx, dtype_name(w.dtype)).to(w.device)
        q, s, z = quantize_groupwise(w, bits, group, sym)
        layer.qweight.copy_(pack(q, bits))
        layer.scales.copy_(s)
        if not sym:
            layer.zeros.copy_(z)
        return layer

    def dequantize(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Dense ``[n, dim]`` rows (all of them for ``rows=None``) in the original dtype."""
        q, s = (self.qweight, self.scales) if rows is None else (self.qweight[rows], self.scales[rows])
        z = self.zeros if rows is None or self.zeros is None else self.zeros[rows]
        return dequantize_groupwise(unpack(q, self.bits, self.embedding_dim), s, z, self.bits, self.group, self.dtype)

    @property
    def weight(self) -> torch.Tensor:
        """Dense view for code that reads ``.weight`` (a fresh tensor, not storage)."""
        return self.dequantize()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        flat = input_ids.reshape(-1)
        return self.dequantize(flat).reshape(*input_ids.shape, self.embedding_dim)

    def layer_args(self) -> dict[str, Any]:
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim, "bits": self.bits,
                "group": self.group, "sym": self.sym, "padding_idx": self.padding_idx,
                "dtype": dtype_name(self.dtype)}

    def logical_params(self) -> int:
        return self.num_embeddings * self.embedding_dim

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, bits={self.bits}, group={self.group}, sym={self.sym}"
