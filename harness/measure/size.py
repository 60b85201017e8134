"""Size: bytes of what is really stored.

- ``size.bytes``: the size of ``model.safetensors`` written by ``save_model`` (shared
  tensors once), i.e. exactly what a user would ship.
- ``size.params``: parameter elements really stored (shared once; a packed int4 tensor
  counts its logical values; a low-rank pair counts r·(in+out)).
- ``size.bits_per_param``: stored bits of the blocks' linear-layer weights *including*
  scales, zeros, codebooks, sparse metadata and factors, divided by the dense weight
  count those layers stand for. Biases, norms, embeddings and an uncompressed output
  head are excluded (they are in size.bytes); a compressed head or embedding is included.
  A mask or fake-quant layer stores dense floats, so it stays at 16/32 bits: no saving.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from harness.layers.base import CompressedModule, is_linear, linear_weight
from harness.records import Record


def serialized_bytes(model: nn.Module) -> int:
    """Bytes of the safetensors file holding the model's full state."""
    from safetensors.torch import save_model

    with tempfile.TemporaryDirectory(prefix="harness-size-") as d:
        f = Path(d) / "model.safetensors"
        save_model(model, str(f))
        return os.path.getsize(f)


def _unique_tensors(tensors) -> list[torch.Tensor]:
    seen: set[tuple[int, tuple]] = set()
    out = []
    for t in tensors:
        key = (t.data_ptr(), tuple(t.shape))
        if t.numel() and key not in seen:
            seen.add(key)
            out.append(t)
    return out


def _output_head(model: nn.Module) -> nn.Module | None:
    try:
        return model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    except Exception:  # pragma: no cover - models without a head
        return None


def _weight_tensors(mod: nn.Module) -> tuple[list[torch.Tensor], int]:
    """A linear layer's stored weight tensors (a compressed layer: every tensor but its
    bias) and the dense weight count they stand for."""
    if isinstance(mod, CompressedModule):
        return ([t for n, t in mod.state_dict(keep_vars=True).items() if n.split(".")[-1] != "bias"],
                mod.logical_params())
    w = linear_weight(mod)
    return [w], w.numel()


def linear_params(model: nn.Module) -> int:
    """Weights of every dense linear layer (nn.Linear, Conv1D; the LM head included), each
    layer on its own: the multiply-adds per token of a model whose linears are dense, e.g.
    the ideal speed-up of structured pruning or a shallower student is before / after."""
    return sum(linear_weight(m).numel() for m in model.modules() if is_linear(m))


def layer_bits(model: nn.Module, names: list[str]) -> tuple[float, float]:
    """(stored bits per dense weight, stored parameters per dense weight) over the named
    linear layers, each counted on its own: a weight two layers share (share-layers) counts
    twice here, once in ``weight_storage`` and size.bytes."""
    bits = logical = params = 0
    for n in names:
        mod = model.get_submodule(n)
        tensors, dense = _weight_tensors(mod)
        bits += sum(t.numel() * t.element_size() * 8 for t in tensors)
        logical += dense
        params += mod.stored_params() if isinstance(mod, CompressedModule) else dense
    return bits / logical, params / logical


def weight_storage(model: nn.Module) -> tuple[int, int]:
    """(stored bits, dense-equivalent weight count) over the linear layers of the
    transformer blocks, shared tensors once. The output head is excluded, like the
    embeddings: compression methods keep it (GPTQ, AWQ, SparseGPT all do); it is in
    size.bytes."""
    bits = 0
    logical = 0
    counted: set[tuple[int, tuple]] = set()
    head = _output_head(model)
    for mod in model.modules():
        if mod is head and head is not None and not isinstance(head, CompressedModule):
            continue
        if not (isinstance(mod, CompressedModule) or is_linear(mod)):
            continue
        tensors, dense = _weight_tensors(mod)
        logical += dense
        for t in tensors:
            key = (t.data_ptr(), tuple(t.shape))
            if key in counted:
                continue
            counted.add(key)
            bits += t.numel() * t.element_size() * 8
    return bits, logical


def stored_params(model: nn.Module) -> int:
    """Parameter elements really stored (see module docstring)."""
    total = 0
    inside: set[int] = set()
    for mod in model.modules():
        if isinstance(mod, CompressedModule):
            stored = list(mod.state_dict(keep_vars=True).values())
            if not (stored and all(id(t) in inside for t in stored)):  # a head sharing the embedding's codes: once
                total += mod.stored_params()
            inside.update(id(t) for t in stored)
            inside.update(id(t) for t in mod.buffers(recurse=False))  # kernel layouts (not stored)
    for t in _unique_tensors(list(model.parameters()) + [
            b for b in model.buffers() if b.is_floating_point()]):
        if id(t) not in inside:
            total += t.numel()
    return total


def measure_size(model: nn.Module, *, reference_bytes: int | None = None) -> list[Record]:
    """Records: size.bytes, size.params, size.bits_per_param [, size.compression_ratio]."""
    nbytes = serialized_bytes(model)
    bits, logical = weight_storage(model)
    recs = [Record("size.bytes", nbytes),
            Record("size.params", stored_params(model)),
            Record("size.bits_per_param", bits / logical) if logical else
            Record.na("size.bits_per_param", "model has no linear layers")]
    if reference_bytes:
        recs.append(Record("size.compression_ratio", reference_bytes / nbytes,
                           extra={"reference_bytes": reference_bytes}))
    return recs
