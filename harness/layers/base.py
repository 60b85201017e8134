"""Shared machinery of the real compressed modules.

A compressed module (QuantLinear, SparseLinear, LowRankLinear, QLRLinear, ...) subclasses
``CompressedModule``: it registers under a name, describes its constructor arguments in
``layer_args()`` (JSON-safe), and can be rebuilt empty from them with ``from_args`` so a
saved model reloads from safetensors + a JSON manifest, never pickle. Every tensor it
stores is a registered buffer or parameter, so ``state_dict`` holds exactly the stored
bytes that ``measure.size`` counts.

Each module also carries its CPU *plan* (``Plan``: which code path runs it, the refused
paths and why, the derived ``_kc_*`` tensors it needs): ``plan`` makes it with the planner
registered for the layer's name (``PLANNERS``, filled by ``harness.layers.exec`` and the
layer modules) and caches it on the module until a stored buffer changes. This module
imports nothing from the rest of ``harness.layers``.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
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
    "gguf_linear": "harness.layers.ggml", "gguf_embedding": "harness.layers.ggml",  # GGUF blocks as stored
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
        (plans now; the planners are in ``harness.layers.exec``)."""
        return kernel_info(self)

    def _apply(self, fn, recurse=True):  # .to()/.cuda()/.half(): kernel layouts are remade after the move
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


# -- the CPU plan every compressed module carries ------------------------------------------------
ENV = "HARNESS_CPU_KERNELS"
CACHE_PREFIX = "_kc_"
REFERENCE = "torch reference (dequantize per call)"

Cache = dict[str, torch.Tensor]


@dataclass
class Plan:
    """One layer's CPU path: label, refused paths, layout builder and forward."""

    kernel: str
    why_not: dict[str, str] = field(default_factory=dict)
    build: Callable[[Any], Cache] | None = None
    run: Callable[[Any, torch.Tensor, Cache], torch.Tensor] | None = None


PLANNERS: dict[str, Callable[[Any], Plan]] = {}
# Fixed labels of layers that always run the same code (no planner).
LABELS = {"lowrank_linear": "torch F.linear x2 (low-rank factors)",
          "dynamic_int8_linear": "fbgemm dynamic int8 (quantized.linear_dynamic)",
          "fp8_linear": "torch reference (fp8 dequantize per call)"}


def planner(*names: str):
    def deco(fn: Callable[[Any], Plan]) -> Callable[[Any], Plan]:
        for n in names:
            PLANNERS[n] = fn
        return fn
    return deco


def disabled_reason(module: nn.Module) -> str | None:
    """Why the kernels are off for ``module`` (None when they may run)."""
    env = os.environ.get(ENV, "1").strip().lower()
    if env in ("0", "off", "false", "no", "reference"):
        return f"{ENV}={os.environ[ENV]} forces the torch reference"
    if not getattr(module, "use_kernel", True):
        return "use_kernel=False on this layer"
    return None


def _sources(module: nn.Module) -> list[torch.Tensor]:
    ts = [t for n, t in module._buffers.items() if t is not None and not n.startswith(CACHE_PREFIX)]
    return ts + [p for p in module._parameters.values() if p is not None]


def _key(module: nn.Module) -> tuple:
    return (os.environ.get(ENV), getattr(module, "use_kernel", True),
            tuple((t.data_ptr(), t._version, t.device.type, t.dtype) for t in _sources(module)))


def drop_cache(module: nn.Module) -> None:
    """Forget the plan and free its derived tensors (before ``.to()``, on buffer change)."""
    for n in [n for n in module._buffers if n.startswith(CACHE_PREFIX)]:
        del module._buffers[n]
    module.__dict__.pop("_kernel_state", None)


def _device(module: nn.Module) -> torch.device:
    src = _sources(module)
    return src[0].device if src else torch.device("cpu")


def plan(module: CompressedModule) -> tuple[Plan, Cache]:
    """The module's current CPU plan and its derived tensors (built now if needed)."""
    key = _key(module)
    state = module.__dict__.get("_kernel_state")
    if state is not None and state[0] == key:
        return state[1], state[2]
    drop_cache(module)
    reason = disabled_reason(module)
    make = PLANNERS.get(module.layer_name)
    if _device(module).type != "cpu":
        p = Plan(f"{_device(module).type}: layer forward (harness.kernels dispatch where it applies)")
    elif make is None:
        p = Plan(LABELS.get(module.layer_name, REFERENCE))
    elif reason:
        p = Plan(REFERENCE, {"cpu kernels": reason})
    else:
        p = make(module)
    cache: Cache = {}
    if p.build is not None:
        with torch.inference_mode(False), torch.no_grad():
            cache = p.build(module)
        for n, t in cache.items():
            module.register_buffer(CACHE_PREFIX + n, t, persistent=False)
    module.__dict__["_kernel_state"] = (_key(module), p, cache)
    return p, cache


def kernel_info(module: CompressedModule) -> dict[str, Any]:
    """{"kernel": label, "why_not": {path: reason}, "cache_bytes": derived bytes}."""
    p, cache = plan(module)
    return {"kernel": p.kernel, "why_not": dict(p.why_not),
            "cache_bytes": sum(t.numel() * t.element_size() for t in cache.values())}
