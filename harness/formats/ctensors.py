"""compressed-tensors (llm-compressor's format, which vLLM and transformers load), written
from the harness's packed layers with their own codes.

A checkpoint is a Hugging Face directory: ``config.json`` with a ``quantization_config``
(``quant_method: compressed-tensors``, one config group per weight scheme, the dense
linears under ``ignore``), ``model.safetensors`` and the tokenizer. Per quantized linear:

- ``pack-quantized`` (QuantLinear, 1-8 bits, a group that divides the row or per channel,
  sym or asym): ``weight_packed`` int32 ``[out, ceil(in*bits/32)]``, value ``k`` of a row at
  bit ``k*bits`` of its little-endian bit stream, stored as ``q + 2**(bits-1)`` for the
  signed code ``q``, i.e. exactly the harness's unsigned code ``c``; ``weight_scale``
  ``[out, n_groups]`` (float16 as stored); ``weight_zero_point`` (asym only: ``z - 2**(bits-1)``
  packed the same way along the output dim); ``weight_shape``. compressed-tensors computes
  ``(q - zp) * s = (c - z) * s`` in the scale's dtype.
- ``int-quantized`` (W8A8Linear): int8 ``weight``, per-channel ``weight_scale``, dynamic
  per-token int8 input activations.

Refused in one line: Q4_1's float minimums, ragged groups, AWQ input scales, SmoothQuant
scales, sparsity (sparse-24-bitmask left compressed-tensors in 0.15) and everything that
is not integer codes. ``ctensors_read`` reads the same formats back.
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.formats import FormatError
from harness.layers.base import CompressedModule, is_linear
from harness.layers.quant import QuantLinear, W8A8Linear

TAKES = ("compressed-tensors takes QuantLinear codes (1-8 bits, a group dividing the row or per channel, sym or "
         "asym: pack-quantized) and W8A8Linear (int-quantized)")


def pack_int32(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned codes ``[rows, n]`` (< 2**bits) -> int32 ``[rows, ceil(n*bits/32)]``, value ``k``
    at bit ``k*bits`` of the row's little-endian stream (compressed-tensors' pack_to_int32)."""
    rows, n = codes.shape
    bit = torch.arange(bits, dtype=torch.int64)
    stream = ((codes.to(torch.int64).unsqueeze(-1) >> bit) & 1).reshape(rows, n * bits)
    words = math.ceil(n * bits / 32)
    stream = torch.cat([stream, stream.new_zeros(rows, words * 32 - n * bits)], 1).reshape(rows, words, 32)
    value = (stream << torch.arange(32, dtype=torch.int64)).sum(-1)
    return torch.where(value >= 2**31, value - 2**32, value).to(torch.int32)


def unpack_int32(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of ``pack_int32``: uint8 codes ``[rows, n]``."""
    rows, words = packed.shape
    stream = ((packed.to(torch.int64).unsqueeze(-1) >> torch.arange(32, dtype=torch.int64)) & 1)
    stream = stream.reshape(rows, words * 32)[:, : n * bits].reshape(rows, n, bits)
    return (stream << torch.arange(bits, dtype=torch.int64)).sum(-1).to(torch.uint8)


def _weights_args(bits: int, group: int | None, sym: bool) -> dict[str, Any]:
    return {"num_bits": bits, "type": "int", "symmetric": sym, "strategy": "channel" if group is None else "group",
            "group_size": group, "dynamic": False, "observer": "minmax", "actorder": None, "block_structure": None}


def _quant(name: str, m: QuantLinear) -> tuple[tuple, dict[str, torch.Tensor]]:
    if m.input_scale is not None:
        raise FormatError(f"{name}: AWQ input scales (a float per input channel) have no compressed-tensors "
                          f"tensor; {TAKES}")
    if m.mins is not None:
        raise FormatError(f"{name}: float minimums (GGUF Q4_1) are not integer zero points; {TAKES}")
    group = None if m.group is None or m.group >= m.in_features else m.group  # one group a row: per channel
    if group is not None and m.in_features % group:
        raise FormatError(f"{name}: group {group} does not divide {m.in_features} inputs; {TAKES}")
    out = {"weight_packed": pack_int32(m.codes(), m.bits), "weight_scale": m.scales.clone(),
           "weight_shape": torch.tensor([m.out_features, m.in_features], dtype=torch.int64)}
    if m.zeros is not None:
        out["weight_zero_point"] = pack_int32(m.zeros.t().contiguous(), m.bits).t().contiguous()
    return ("pack-quantized", m.bits, group, m.sym), out


def _w8a8(name: str, m: W8A8Linear) -> tuple[tuple, dict[str, torch.Tensor]]:
    if m.smooth is not None:
        raise FormatError(f"{name}: SmoothQuant migration scales have no compressed-tensors tensor (fold them "
                          f"into the previous norm first); {TAKES}")
    return ("int-quantized", 8, None, True), {"weight": m.qweight.clone(), "weight_scale": m.w_scales[:, None].clone()}


def _scheme(key: tuple, targets: list[str]) -> dict[str, Any]:
    fmt, bits, group, sym = key
    acts = None
    if fmt == "int-quantized":
        acts = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token", "group_size": None,
                "dynamic": True, "observer": None, "actorder": None, "block_structure": None}
    return {"targets": sorted(targets), "weights": _weights_args(bits, group, sym), "input_activations": acts,
            "output_activations": None, "format": fmt}


def _collect(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[tuple, list[str]], list[str]]:
    state: dict[str, torch.Tensor] = {}
    schemes: dict[tuple, list[str]] = {}
    ignore: list[str] = []
    done: set[str] = set()
    for name, mod in model.named_modules():
        if any(name.startswith(d + ".") for d in done):
            continue
        if isinstance(mod, QuantLinear):
            key, tensors = _quant(name, mod)
        elif isinstance(mod, W8A8Linear):
            key, tensors = _w8a8(name, mod)
        elif isinstance(mod, CompressedModule):
            raise FormatError(f"{name}: {mod.layer_name} has no compressed-tensors format here; {TAKES}")
        else:
            if is_linear(mod):
                ignore.append(name)
            continue
        done.add(name)
        schemes.setdefault(key, []).append(name)
        state.update({f"{name}.{k}": v.contiguous() for k, v in tensors.items()})
        if getattr(mod, "bias", None) is not None:
            state[f"{name}.bias"] = mod.bias.detach().clone()
    for name, t in model.state_dict().items():
        if not any(name.startswith(d + ".") for d in done):
            state.setdefault(name, t)
    return state, schemes, ignore


def write_ctensors(model: nn.Module, path: str | Path, *, tokenizer: Any = None) -> dict[str, Any]:
    """Write ``model`` as a compressed-tensors directory at ``path`` (new or empty)."""
    from safetensors.torch import save_file

    from harness.checkpoint import shared_map

    state, schemes, ignore = _collect(model)
    if not schemes:
        raise FormatError(f"the model has no quantized linear layer to write; {TAKES}")
    path = Path(path).expanduser()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FormatError(f"{str(path)!r} exists and is not an empty directory; give a new or empty one")
    aliases = shared_map(model)
    state = {k: v.detach().cpu().contiguous() for k, v in state.items() if k not in aliases}
    fmts = sorted({k[0] for k in schemes})
    qconfig = {"quant_method": "compressed-tensors", "format": fmts[0] if len(fmts) == 1 else "mixed-precision",
               "quantization_status": "compressed", "ignore": sorted(ignore), "kv_cache_scheme": None,
               "config_groups": {f"group_{i}": _scheme(k, t) for i, (k, t) in enumerate(schemes.items())},
               "sparsity_config": {}, "transform_config": {}, "global_compression_ratio": None}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        model.config.to_json_file(str(tmp / "config.json"))
        cfg = json.loads((tmp / "config.json").read_text())
        cfg["quantization_config"] = qconfig
        cfg["architectures"] = cfg.get("architectures") or [type(model).__name__]
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        tmp.chmod(0o755)
        if path.exists():
            path.rmdir()
        tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    n = Counter({k[0]: len(v) for k, v in schemes.items()})
    return {"path": str(path), "bytes": (path / "model.safetensors").stat().st_size,
            "types": dict(n), "notes": [f"{len(v)} layers {k[0]} {k[1]}-bit group {k[2] or 'channel'} "
                                        f"{'sym' if k[3] else 'asym'}" for k, v in schemes.items()]}


__all__ = ["TAKES", "pack_int32", "unpack_int32", "write_ctensors"]
