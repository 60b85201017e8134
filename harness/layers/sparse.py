"""SparseLinear: an unstructured-sparse linear layer whose storage really shrinks.

Only the kept weights are stored, plus index metadata in one of two layouts:

- ``bitmask``: the nonzero values in row-major order + one bit per dense position
  (``ceil(out*in/8)`` uint8 bytes). Cost: nnz*value_bits + out*in bits.
- ``csr``: the nonzero values + a column index per value (int16 when ``in < 32768``,
  else int32) + int32/int64 row pointers [out+1]. Cost: nnz*(value_bits+index_bits) + ...

``choose_format`` picks whichever is smaller for the given shape/nnz/dtype ("auto").
All tensors are registered buffers, so ``state_dict`` holds exactly the stored bytes and
``measure.size`` counts the metadata. The CPU forward decompresses the weight once into a
dense cache counted in memory (``harness.layers.exec``): this layer saves *storage*, not
CPU time (no sparse CPU kernel is faster than dense at 50%); the GPU 2:4 path is
``harness.techniques.pruning.nm.to_semi_structured``.
"""
from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from harness.config import SpecError
from harness.layers.base import DTYPES, CompressedModule, dtype_name, is_linear, linear_weight
from harness.layers.exec import cpu_forward

Format = Literal["bitmask", "csr"]
FORMATS = ("bitmask", "csr")



def _index_dtype(n: int) -> torch.dtype:
    return torch.int16 if n < 2**15 else torch.int32


def _rowptr_dtype(nnz: int) -> torch.dtype:
    return torch.int32 if nnz < 2**31 else torch.int64


def format_bytes(fmt: str, out_f: int, in_f: int, nnz: int, dtype: torch.dtype) -> int:
    """Stored bytes of the weight (values + index metadata) in layout ``fmt``."""
    vb = torch.empty((), dtype=dtype).element_size()
    if fmt == "bitmask":
        return nnz * vb + math.ceil(out_f * in_f / 8)
    if fmt == "csr":
        ib = torch.empty((), dtype=_index_dtype(in_f)).element_size()
        rb = torch.empty((), dtype=_rowptr_dtype(nnz)).element_size()
        return nnz * (vb + ib) + (out_f + 1) * rb
    raise SpecError(f"sparse format {fmt!r} is not allowed; choose one of {', '.join(FORMATS)}")


def choose_format(out_f: int, in_f: int, nnz: int, dtype: torch.dtype) -> str:
    """The smaller of bitmask and CSR for this layer."""
    return min(FORMATS, key=lambda f: format_bytes(f, out_f, in_f, nnz, dtype))


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Flattened bool mask -> uint8 bytes, bit i of byte b is element 8*b+i."""
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = (2 ** torch.arange(8, dtype=torch.int32, device=flat.device))
    return (flat.view(-1, 8).to(torch.int32) * weights).sum(1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of ``pack_bits``: uint8 bytes -> flat bool mask of ``numel`` elements."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(1) >> shifts) & 1
    return bits.reshape(-1)[:numel].bool()


class SparseLinear(CompressedModule):
    """y = x W^T + b with W stored as nonzero values + bitmask or CSR indices."""

    layer_name = "sparse_linear"

    def __init__(self, in_features: int, out_features: int, nnz: int, *, bias: bool = True,
                 format: str = "bitmask", dtype: str = "float32") -> None:
        super().__init__()
        if format not in FORMATS:
            raise SpecError(f"sparse format {format!r} is not allowed; choose one of {', '.join(FORMATS)}")
        self.in_features, self.out_features, self.nnz = int(in_features), int(out_features), int(nnz)
        self.format = format
        dt = DTYPES[dtype]
        self.register_buffer("values", torch.zeros(self.nnz, dtype=dt))
        if format == "bitmask":
            self.register_buffer("mask", torch.zeros(math.ceil(self.out_features * self.in_features / 8),
                                                     dtype=torch.uint8))
        else:
            self.register_buffer("col_idx", torch.zeros(self.nnz, dtype=_index_dtype(self.in_features)))
            self.register_buffer("row_ptr", torch.zeros(self.out_features + 1, dtype=_rowptr_dtype(self.nnz)))
        self.bias = nn.Parameter(torch.zeros(self.out_features, dtype=dt)) if bias else None

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                   mask: torch.Tensor | None = None, format: str = "auto") -> SparseLinear:
        """Pack a [out, in] weight; ``mask`` (True = kept) defaults to ``weight != 0``."""
        w = weight.detach()
        keep = (w != 0) if mask is None else mask.to(device=w.device, dtype=torch.bool)
        out_f, in_f = w.shape
        nnz = int(keep.sum())
        fmt = choose_format(out_f, in_f, nnz, w.dtype) if format == "auto" else format
        layer = cls(in_f, out_f, nnz, bias=bias is not None, format=fmt, dtype=dtype_name(w.dtype))
        layer = layer.to(w.device)
        with torch.no_grad():
            layer.values.copy_(w[keep])
            if fmt == "bitmask":
                layer.mask.copy_(pack_bits(keep))
            else:
                rows, cols = keep.nonzero(as_tuple=True)
                layer.col_idx.copy_(cols.to(layer.col_idx.dtype))
                counts = torch.bincount(rows, minlength=out_f)
                layer.row_ptr.copy_(torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(layer.row_ptr.dtype))
            if bias is not None:
                layer.bias.copy_(bias.detach())
        return layer

    @classmethod
    def from_linear(cls, module: nn.Module, *, mask: torch.Tensor | None = None,
                    format: str = "auto") -> SparseLinear:
        """Pack an nn.Linear or GPT-2 Conv1D (``mask`` in [out, in] layout)."""
        if not is_linear(module):
            raise TypeError(f"not a linear layer: {type(module).__name__}")
        return cls.from_dense(linear_weight(module), getattr(module, "bias", None), mask=mask, format=format)

    def keep_mask(self) -> torch.Tensor:
        """[out, in] bool: True where a weight is stored."""
        n = self.out_features * self.in_features
        if self.format == "bitmask":
            return unpack_bits(self.mask, n).view(self.out_features, self.in_features)
        counts = (self.row_ptr[1:] - self.row_ptr[:-1]).long()
        rows = torch.repeat_interleave(torch.arange(self.out_features, device=counts.device), counts)
        keep = torch.zeros(self.out_features, self.in_features, dtype=torch.bool, device=counts.device)
        keep[rows, self.col_idx.long()] = True
        return keep

    def dense_weight(self) -> torch.Tensor:
        """The [out, in] dense weight (zeros where pruned)."""
        w = torch.zeros(self.out_features, self.in_features, dtype=self.values.dtype, device=self.values.device)
        if self.format == "bitmask":
            w.view(-1)[unpack_bits(self.mask, w.numel())] = self.values
        else:
            counts = (self.row_ptr[1:] - self.row_ptr[:-1]).long()
            rows = torch.repeat_interleave(torch.arange(self.out_features, device=counts.device), counts)
            w[rows, self.col_idx.long()] = self.values
        return w

    @property
    def weight(self) -> torch.Tensor:
        """Dense view for code that reads ``.weight`` (a fresh tensor, not storage)."""
        return self.dense_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (y := cpu_forward(self, x)) is not None:  # dense cache, counted (layers.exec)
            return y
        return F.linear(x, self.dense_weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def layer_args(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features, "nnz": self.nnz,
                "bias": self.bias is not None, "format": self.format,
                "dtype": dtype_name(self.values.dtype)}

    def logical_params(self) -> int:
        return self.out_features * self.in_features

    def stored_params(self) -> int:
        return self.nnz

    def extra_repr(self) -> str:
        dens = self.nnz / max(self.logical_params(), 1)
        return (f"in_features={self.in_features}, out_features={self.out_features}, format={self.format}, "
                f"density={dens:.3f}")
