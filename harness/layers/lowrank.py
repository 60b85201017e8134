"""LowRankLinear: a dense layer replaced by two thin matmuls, ``y = B (A x) + b``.

Stores ``A`` ``[rank, in]`` and ``B`` ``[out, rank]`` (plus the optional bias) as
parameters, so ``state_dict`` holds exactly ``rank * (in + out)`` weight values. It only
saves storage and compute when ``rank < in * out / (in + out)`` (the break-even rank);
the techniques in ``harness.techniques.lowrank`` choose ranks below it.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.config import SpecError
from harness.layers.base import DTYPES, CompressedModule, dtype_name


def check_rank(rank: int, in_features: int, out_features: int, where: str = "") -> None:
    """One-line SpecError unless ``0 < rank < min(in, out)`` (a full rank saves nothing)."""
    hi = min(in_features, out_features)
    if not 0 < rank < hi:
        at = f" for layer {where}" if where else ""
        raise SpecError(f"rank={rank} is not allowed{at} ({out_features}x{in_features}); "
                        f"choose 1 <= rank < {hi}")


class LowRankLinear(CompressedModule):
    """``B @ A`` factorization of an ``[out, in]`` weight (drop-in for Linear / Conv1D)."""

    layer_name = "lowrank_linear"

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = False,
                 dtype: str = "float32", *, allow_full: bool = False) -> None:
        super().__init__()
        if not (allow_full and rank == min(in_features, out_features)):
            check_rank(rank, in_features, out_features)
        self.in_features, self.out_features, self.rank = int(in_features), int(out_features), int(rank)
        dt = DTYPES[dtype]
        self.A = nn.Parameter(torch.zeros(rank, in_features, dtype=dt))
        self.B = nn.Parameter(torch.zeros(out_features, rank, dtype=dt))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dt)) if bias else None

    @classmethod
    def from_factors(cls, A: torch.Tensor, B: torch.Tensor, bias: torch.Tensor | None = None, *,
                     allow_full: bool = False) -> LowRankLinear:
        """Wrap factors with ``W ≈ B @ A`` (``A`` ``[r, in]``, ``B`` ``[out, r]``)."""
        r, in_f = A.shape
        out_f = B.shape[0]
        dt = bias.dtype if bias is not None else A.dtype
        layer = cls(in_f, out_f, r, bias=bias is not None, dtype=dtype_name(dt), allow_full=allow_full)
        layer.to(A.device)
        with torch.no_grad():
            layer.A.copy_(A)
            layer.B.copy_(B)
            if bias is not None:
                layer.bias.copy_(bias.detach())
        return layer

    def layer_args(self) -> dict[str, Any]:
        args = {"in_features": self.in_features, "out_features": self.out_features, "rank": self.rank,
                "bias": self.bias is not None, "dtype": dtype_name(self.A.dtype)}
        if self.rank >= min(self.in_features, self.out_features):
            args["allow_full"] = True
        return args

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> LowRankLinear:
        return cls(**args)

    def logical_params(self) -> int:
        return self.in_features * self.out_features

    def stored_params(self) -> int:
        return self.rank * (self.in_features + self.out_features)

    def dense_weight(self) -> torch.Tensor:
        """The ``[out, in]`` product (for tests and error measurements)."""
        return self.B @ self.A

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.A), self.B, self.bias)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, bias={self.bias is not None}"


__all__ = ["LowRankLinear", "check_rank"]
