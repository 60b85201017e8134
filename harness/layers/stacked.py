"""Stacked formats: what a pipeline stores when two compressions apply to one layer.

- ``SparseQuantLinear`` (sparse + quantized): only the kept weights are stored, as packed
  group-wise integer codes, plus a bitmask of the kept positions. Stored: ``mask`` uint8
  ``[ceil(out*in/8)]`` (``sparse.pack_bits`` layout), ``qvalues`` uint8 ``[1, packed(nnz)]``
  (the kept codes in row-major order), ``scales`` float16 ``[out, n_groups]`` and, when
  asymmetric, ``zeros`` uint8 ``[out, n_groups]`` (groups along the input dim, as in
  QuantLinear), optional ``bias``. A pruned position dequantizes to exactly 0.
  Cost: ``out*in`` bits of mask + ``nnz*bits`` bits of codes + scales; it beats a dense
  code matrix only when the kept fraction is below ``1 - 1/bits`` (``saves_over_dense``).
- ``LowRankQuantLinear`` (low-rank + quantized): ``y = B (A x) + b`` with both factors
  stored as packed group-wise codes (``a_*``: A ``[rank, in]``, groups along ``in``;
  ``b_*``: B ``[out, rank]``, groups along ``rank``), the QuantLinear layout per factor.

Both forwards dequantize and run dense matmuls (the torch reference); on CPU the layers
keep the dequantized weight (sparse + quantized) or factors (low-rank + quantized) as a
cache counted in memory (``harness.layers.exec``): storage savings, no faster kernel.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from harness.layers.base import DTYPES, CompressedModule, dtype_name
from harness.layers.exec import STORAGE_ONLY, Plan, cpu_forward, planner
from harness.layers.lowrank import check_rank
from harness.layers.sparse import pack_bits, unpack_bits
from harness.primitives.packing import pack, packed_width, unpack
from harness.primitives.quant import check_quant_args, dequantize_groupwise, n_groups


def _bias_buffer(module: CompressedModule, out_f: int, bias: bool, bias_dtype: str) -> None:
    if bias:
        module.register_buffer("bias", torch.zeros(out_f, dtype=DTYPES[bias_dtype]))
    else:
        module.bias = None


def _quant_buffers(module: CompressedModule, prefix: str, rows: int, cols: int, bits: int, group: int | None,
                   sym: bool) -> None:
    """``{prefix}qweight`` / ``scales`` / ``zeros``: one factor in the QuantLinear layout."""
    check_quant_args(bits, group, cols)
    ng = n_groups(cols, group)
    module.register_buffer(prefix + "qweight", torch.zeros(rows, packed_width(cols, bits), dtype=torch.uint8))
    module.register_buffer(prefix + "scales", torch.ones(rows, ng, dtype=torch.float16))
    if sym:
        setattr(module, prefix + "zeros", None)
    else:
        module.register_buffer(prefix + "zeros", torch.zeros(rows, ng, dtype=torch.uint8))


def quant_bytes(rows: int, cols: int, bits: int, group: int | None, sym: bool) -> int:
    """Stored bytes of a dense ``[rows, cols]`` code matrix with its scales (and zeros)."""
    ng = n_groups(cols, group)
    return rows * packed_width(cols, bits) + rows * ng * (2 + (0 if sym else 1))


def sparse_quant_bytes(rows: int, cols: int, nnz: int, bits: int, group: int | None, sym: bool) -> int:
    """Stored bytes of a SparseQuantLinear weight: mask + kept codes + scales (and zeros)."""
    ng = n_groups(cols, group)
    return math.ceil(rows * cols / 8) + packed_width(nnz, bits) + rows * ng * (2 + (0 if sym else 1))


def saves_over_dense(rows: int, cols: int, nnz: int, bits: int, group: int | None, sym: bool) -> bool:
    """True when storing only the kept codes (+ mask) is smaller than all the codes."""
    return sparse_quant_bytes(rows, cols, nnz, bits, group, sym) < quant_bytes(rows, cols, bits, group, sym)


class SparseQuantLinear(CompressedModule):
    """Sparse + quantized linear layer: bitmask + packed codes of the kept weights."""

    layer_name = "sparse_quant_linear"

    def __init__(self, in_features: int, out_features: int, nnz: int, bits: int = 4, group: int | None = 128,
                 sym: bool = True, bias: bool = False, bias_dtype: str = "float32") -> None:
        super().__init__()
        check_quant_args(bits, group, in_features)
        self.in_features, self.out_features, self.nnz = int(in_features), int(out_features), int(nnz)
        self.bits, self.group, self.sym = int(bits), (None if group is None else int(group)), bool(sym)
        self.register_buffer("mask", torch.zeros(math.ceil(out_features * in_features / 8), dtype=torch.uint8))
        self.register_buffer("qvalues", torch.zeros(1, packed_width(self.nnz, bits), dtype=torch.uint8))
        ng = n_groups(in_features, group)
        self.register_buffer("scales", torch.ones(out_features, ng, dtype=torch.float16))
        if sym:
            self.zeros = None
        else:
            self.register_buffer("zeros", torch.zeros(out_features, ng, dtype=torch.uint8))
        _bias_buffer(self, out_features, bias, bias_dtype)

    @classmethod
    def from_quant(cls, q: CompressedModule, keep: torch.Tensor) -> SparseQuantLinear:
        """Keep only the codes of ``q`` (a QuantLinear) where ``keep`` ``[out, in]`` is True.

        The pruned positions are dropped, so they dequantize to exactly 0 whatever code
        the quantizer gave them."""
        if getattr(q, "input_scale", None) is not None:
            raise ValueError("a QuantLinear with input scales (AWQ) has no sparse + quantized format")
        keep = keep.to(device=q.qweight.device, dtype=torch.bool)
        codes = q.codes()
        b = q.bias
        layer = cls(q.in_features, q.out_features, int(keep.sum()), q.bits, q.group, q.sym, bias=b is not None,
                    bias_dtype=dtype_name(b.dtype) if b is not None else "float32").to(q.qweight.device)
        layer.mask.copy_(pack_bits(keep))
        layer.qvalues.copy_(pack(codes[keep].reshape(1, -1), q.bits))
        layer.scales.copy_(q.scales)
        if not q.sym:
            layer.zeros.copy_(q.zeros)
        if b is not None:
            layer.bias.copy_(b)
        return layer

    def keep_mask(self) -> torch.Tensor:
        return unpack_bits(self.mask, self.out_features * self.in_features).view(self.out_features, self.in_features)

    def dense_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        keep = self.keep_mask()
        zero = 2 ** (self.bits - 1)  # the code of exactly 0 (symmetric); asymmetric: the group's zero point
        grid = (torch.full(keep.shape, zero, dtype=torch.uint8, device=keep.device) if self.sym else
                self.zeros.repeat_interleave(self.group or self.in_features, 1)[:, :self.in_features].clone())
        grid[keep] = unpack(self.qvalues, self.bits, self.nnz).reshape(-1)
        return dequantize_groupwise(grid, self.scales, self.zeros, self.bits, self.group, dtype)

    @property
    def weight(self) -> torch.Tensor:
        """Dense view for code that reads ``.weight`` (a fresh tensor, not storage)."""
        return self.dense_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (y := cpu_forward(self, x)) is not None:  # dense cache, counted (layers.exec)
            return y
        return F.linear(x, self.dense_weight(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def layer_args(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features, "nnz": self.nnz,
                "bits": self.bits, "group": self.group, "sym": self.sym, "bias": self.bias is not None,
                "bias_dtype": dtype_name(self.bias.dtype) if self.bias is not None else "float32"}

    def logical_params(self) -> int:
        return self.in_features * self.out_features

    def stored_params(self) -> int:
        return self.nnz

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, bits={self.bits}, group={self.group}, "
                f"density={self.nnz / max(self.logical_params(), 1):.3f}")


class LowRankQuantLinear(CompressedModule):
    """Low-rank + quantized linear layer: ``B (A x) + b`` with packed A and B."""

    layer_name = "lowrank_quant_linear"

    def __init__(self, in_features: int, out_features: int, rank: int, bits: int = 4, group: int | None = 128,
                 sym: bool = True, bias: bool = False, bias_dtype: str = "float32") -> None:
        super().__init__()
        check_rank(rank, in_features, out_features)
        self.in_features, self.out_features, self.rank = int(in_features), int(out_features), int(rank)
        self.bits, self.group, self.sym = int(bits), (None if group is None else int(group)), bool(sym)
        _quant_buffers(self, "a_", self.rank, self.in_features, self.bits, self.group, self.sym)
        _quant_buffers(self, "b_", self.out_features, self.rank, self.bits, self.group, self.sym)
        _bias_buffer(self, out_features, bias, bias_dtype)

    @classmethod
    def from_quant(cls, a: CompressedModule, b: CompressedModule, bias: torch.Tensor | None) -> LowRankQuantLinear:
        """Wrap two QuantLinear factors (``a``: in -> rank, ``b``: rank -> out) quantized alike."""
        for f in (a, b):
            if getattr(f, "input_scale", None) is not None:
                raise ValueError("factors with input scales (AWQ) have no low-rank + quantized format")
        if (a.bits, a.group, a.sym) != (b.bits, b.group, b.sym):
            raise ValueError(f"factors quantized differently ({a.bits}/{a.group}/{a.sym} vs "
                             f"{b.bits}/{b.group}/{b.sym}); the stacked format stores one setting")
        layer = cls(a.in_features, b.out_features, a.out_features, a.bits, a.group, a.sym, bias=bias is not None,
                    bias_dtype=dtype_name(bias.dtype) if bias is not None else "float32").to(a.qweight.device)
        for prefix, f in (("a_", a), ("b_", b)):
            getattr(layer, prefix + "qweight").copy_(f.qweight)
            getattr(layer, prefix + "scales").copy_(f.scales)
            if not f.sym:
                getattr(layer, prefix + "zeros").copy_(f.zeros)
        if bias is not None:
            layer.bias.copy_(bias.detach())
        return layer

    def factors(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Dequantized ``(A [rank, in], B [out, rank])``."""
        A = dequantize_groupwise(unpack(self.a_qweight, self.bits, self.in_features), self.a_scales, self.a_zeros,
                                 self.bits, self.group, dtype)
        B = dequantize_groupwise(unpack(self.b_qweight, self.bits, self.rank), self.b_scales, self.b_zeros,
                                 self.bits, self.group, dtype)
        return A, B

    def dense_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        A, B = self.factors(torch.float32)
        return (B @ A).to(dtype)

    @property
    def weight(self) -> torch.Tensor:
        return self.dense_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (y := cpu_forward(self, x)) is not None:  # dequantized factors, cached (layers.exec)
            return y
        A, B = self.factors(x.dtype)
        return F.linear(F.linear(x, A), B, None if self.bias is None else self.bias.to(x.dtype))

    def layer_args(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features, "rank": self.rank,
                "bits": self.bits, "group": self.group, "sym": self.sym, "bias": self.bias is not None,
                "bias_dtype": dtype_name(self.bias.dtype) if self.bias is not None else "float32"}

    def logical_params(self) -> int:
        return self.in_features * self.out_features

    def stored_params(self) -> int:
        return self.rank * (self.in_features + self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, bits={self.bits}, group={self.group}"


def _bias(m, x: torch.Tensor) -> torch.Tensor | None:
    return None if m.bias is None else m.bias.to(x.dtype)


@planner("sparse_quant_linear")
def _sparse_quant_plan(m) -> Plan:
    def build(s) -> dict[str, torch.Tensor]:
        return {"w": s.dense_weight().contiguous()}

    def run(s, x, c) -> torch.Tensor:
        return F.linear(x, c["w"].to(x.dtype), _bias(s, x))
    return Plan(STORAGE_ONLY, {"sparse kernel": "no CPU sparse matmul beats dense at this density"}, build, run)


@planner("lowrank_quant_linear")
def _lowrank_quant_plan(m) -> Plan:
    def build(q) -> dict[str, torch.Tensor]:
        A, B = q.factors()
        return {"a": A.contiguous(), "b": B.contiguous()}

    def run(q, x, c) -> torch.Tensor:
        return F.linear(F.linear(x, c["a"].to(x.dtype)), c["b"].to(x.dtype), _bias(q, x))
    return Plan("torch F.linear x2 (low-rank factors dequantized once, cached)",
                {"int4pack": "no packed kernel for factor pairs here"}, build, run)
