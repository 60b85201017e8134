"""Shared machinery of the real compressed modules.

A compressed module (QuantLinear, SparseLinear, LowRankLinear, QLRLinear, ...) subclasses
``CompressedModule``: it registers under a name, describes its constructor arguments in
``layer_args()`` (JSON-safe), and can be rebuilt empty from them with ``from_args`` so a
saved model reloads from safetensors + a JSON manifest, never pickle. Every tensor it
stores is a registered buffer or parameter, so ``state_dict`` holds exactly the stored
bytes that ``measure.size`` counts.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from harness.registry import Registry

LAYERS: Registry[type[CompressedModule]] = Registry("compressed layer")

# Dtypes a layer's JSON arguments may name (``layer_args`` stores names, never objects).
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")

# Where each saved layer class lives, so a checkpoint loads in a fresh process without the
# caller importing anything first (tests check this covers every registered layer).
LAYER_MODULES = {
    "quant_linear": "harness.layers.quant", "w8a8_linear": "harness.layers.quant",
    "codebook_linear": "harness.layers.quant", "sparse_linear": "harness.layers.sparse",
    "clustered_linear": "harness.layers.quant",  # retired name: loads as a CodebookLinear
    "lowrank_linear": "harness.layers.lowrank", "qlr_linear": "harness.layers.qlr",
    "fp8_linear": "harness.layers.fp8", "dynamic_int8_linear": "harness.layers.dynamic",
    "sparse_quant_linear": "harness.layers.stacked", "lowrank_quant_linear": "harness.layers.stacked",
    "quant_embedding": "harness.layers.embedding",
}


def layer_class(name: str) -> type[CompressedModule]:
    """The layer class saved under ``name``, importing its module on first use."""
    if name not in LAYERS and name in LAYER_MODULES:
        import importlib

        importlib.import_module(LAYER_MODULES[name])
    return LAYERS.get(name)


class CompressedModule(nn.Module):
    layer_name: ClassVar[str] = ""
    # True when the stored tensors are only a simulation (fake-quant, masks).
    simulated: ClassVar[bool] = False
    # False keeps the torch reference forward (no CPU/GPU kernel); see ``harness.layers.exec``.
    use_kernel: bool = True

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.layer_name:
            LAYERS.register(cls.layer_name, cls, replace=True)

    def layer_args(self) -> dict[str, Any]:
        """JSON-safe constructor kwargs that rebuild this module with empty storage."""
        raise NotImplementedError

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> CompressedModule:
        return cls(**args)

    def logical_params(self) -> int:
        """Weights of the dense layer this module stands for (out * in), for bits/param."""
        raise NotImplementedError

    def kernel_info(self) -> dict[str, Any]:
        """Which code path runs this layer here: {"kernel", "why_not", "cache_bytes"}
        (plans now; ``harness.layers.exec``)."""
        from harness.layers.exec import kernel_info

        return kernel_info(self)

    def _apply(self, fn, recurse=True):  # .to()/.cuda()/.half(): kernel layouts are remade after the move
        from harness.layers.exec import drop_cache

        drop_cache(self)
        return super()._apply(fn, recurse)

    def stored_params(self) -> int:
        """Parameter values really stored (packed values count once each, factors
        count r*(in+out)); defaults to the logical count."""
        return self.logical_params()


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight as [out_features, in_features] for nn.Linear and GPT-2's Conv1D."""
    if isinstance(module, nn.Linear):
        return module.weight
    if type(module).__name__ == "Conv1D":  # transformers.pytorch_utils.Conv1D stores [in, out]
        return module.weight.t()
    raise TypeError(f"not a linear layer: {type(module).__name__}")


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """(out_features, in_features) of a Linear or Conv1D."""
    w = linear_weight(module)
    return int(w.shape[0]), int(w.shape[1])


def to_linear(module: nn.Module) -> nn.Linear:
    """An nn.Linear equivalent of a Linear or Conv1D (shares no storage with it)."""
    out_f, in_f = linear_shape(module)
    bias = getattr(module, "bias", None)
    lin = nn.Linear(in_f, out_f, bias=bias is not None, device=linear_weight(module).device,
                    dtype=linear_weight(module).dtype)
    with torch.no_grad():
        lin.weight.copy_(linear_weight(module))
        if bias is not None:
            lin.bias.copy_(bias)
    return lin


def set_module(root: nn.Module, path: str, new: nn.Module) -> None:
    """Replace the submodule at dotted ``path``."""
    parent_path, _, leaf = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, leaf, new)

