"""Read a compressed-tensors checkpoint (llm-compressor's output) into the packed layers.

``pack-quantized`` weights (2/3/4/8 bits, group or channel, sym or asym) become QuantLinear
with the stored codes, zero points and scales; ``int-quantized`` int8 weights become
W8A8Linear when the checkpoint quantizes input activations dynamically per token (W8A8),
QuantLinear 8-bit when it is weight-only. Scales must be float16 values (bf16 scales in
fp16's range are; fp32 scales usually are not): QuantLinear stores fp16, and nothing is
rounded silently. Refused in one line: act-order group indices, static activation
scales, sparsity and transform configs, float formats. The layout is ``ctensors``'.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.formats import FormatError
from harness.formats.ctensors import unpack_int32
from harness.formats.llama import empty_model
from harness.layers.base import set_module
from harness.layers.quant import QuantLinear, W8A8Linear
from harness.models.hf import LoadedModel
from harness.primitives.packing import pack

FORMATS = ("pack-quantized", "int-quantized", "naive-quantized")


def quant_config(path: str | Path) -> dict[str, Any] | None:
    """The directory's compressed-tensors ``quantization_config``, None when it has none."""
    cfg = Path(path).expanduser() / "config.json"
    if not cfg.is_file():
        return None
    try:
        q = json.loads(cfg.read_text()).get("quantization_config")
    except (OSError, ValueError):
        return None
    return q if isinstance(q, dict) and q.get("quant_method") == "compressed-tensors" else None


def _check(q: dict[str, Any], where: str) -> None:
    if q.get("quantization_status", "compressed") != "compressed":
        raise FormatError(f"{where}: quantization_status {q.get('quantization_status')!r}; the harness reads "
                          "compressed checkpoints")
    if q.get("sparsity_config") or q.get("transform_config"):
        raise FormatError(f"{where}: sparsity or transform configs are not read (compressed-tensors dropped "
                          "sparse-24-bitmask in 0.15); the harness reads " + ", ".join(FORMATS))
    for name, g in (q.get("config_groups") or {}).items():
        fmt = g.get("format") or q.get("format")
        if fmt not in FORMATS or (g.get("weights") or {}).get("type", "int") != "int":
            raise FormatError(f"{where}: config group {name} is {fmt} {(g.get('weights') or {}).get('type')}; the "
                              f"harness reads integer weights in " + ", ".join(FORMATS))
        acts = g.get("input_activations")
        if acts and not (acts.get("dynamic") and acts.get("strategy") == "token" and acts.get("num_bits") == 8
                         and acts.get("symmetric", True) and acts.get("type", "int") == "int"):
            raise FormatError(f"{where}: config group {name} quantizes activations as {acts.get('strategy')} "
                              f"{'dynamic' if acts.get('dynamic') else 'static'} {acts.get('num_bits')}-bit; the "
                              "harness reads dynamic per-token int8 (W8A8) or weight-only")


def _fp16(name: str, s: torch.Tensor) -> torch.Tensor:
    h = s.to(torch.float16)
    if not torch.equal(h.to(s.dtype), s):
        raise FormatError(f"{name}: {s.dtype} scales are not all float16 values, which QuantLinear stores "
                          "(no silent rounding); export the checkpoint from an fp16 or bf16 model")
    return h


def _bits(in_f: int, cols: int, name: str) -> int:
    found = [b for b in (2, 3, 4, 8) if math.ceil(in_f * b / 32) == cols]
    if len(found) != 1:
        raise FormatError(f"{name}: {cols} int32 words per {in_f}-value row is no 2/3/4/8-bit packing")
    return found[0]


def _packed(name: str, t: dict[str, torch.Tensor], bias: torch.Tensor | None) -> QuantLinear:
    out_f, in_f = (int(v) for v in t["weight_shape"].tolist())
    bits = _bits(in_f, t["weight_packed"].shape[1], name)
    scales = _fp16(name, t["weight_scale"].reshape(out_f, -1))
    ng = scales.shape[1]
    group = None if ng == 1 else in_f // ng
    if group is not None and group * ng != in_f:
        raise FormatError(f"{name}: {ng} scale groups do not divide {in_f} inputs")
    zp = t.get("weight_zero_point")
    layer = QuantLinear(in_f, out_f, bits, group, sym=zp is None, bias=bias is not None,
                        bias_dtype=str(bias.dtype).removeprefix("torch.") if bias is not None else "float32")
    layer.qweight.copy_(pack(unpack_int32(t["weight_packed"], bits, in_f), bits))
    layer.scales.copy_(scales)
    if zp is not None:  # packed along the output dim: z = zp + 2**(bits-1), the harness's zero code
        layer.zeros.copy_(unpack_int32(zp.t().contiguous(), bits, out_f).t())
    if bias is not None:
        layer.bias.copy_(bias)
    return layer


def _int8(name: str, t: dict[str, torch.Tensor], bias: torch.Tensor | None, w8a8: bool) -> nn.Module:
    q = t["weight"]
    out_f, in_f = q.shape
    scales = _fp16(name, t["weight_scale"].reshape(out_f, -1))
    zp = t.get("weight_zero_point")
    if w8a8:
        if scales.shape[1] != 1 or zp is not None:
            raise FormatError(f"{name}: W8A8 weights here are per-channel symmetric; got {scales.shape[1]} groups"
                              f"{' and zero points' if zp is not None else ''}")
        layer = W8A8Linear(in_f, out_f, bias=bias is not None)
        layer.qweight.copy_(q)
        layer.w_scales.copy_(scales[:, 0])
    else:
        ng = scales.shape[1]
        layer = QuantLinear(in_f, out_f, 8, None if ng == 1 else in_f // ng, sym=zp is None, bias=bias is not None)
        layer.qweight.copy_((q.to(torch.int16) + 128).to(torch.uint8))
        layer.scales.copy_(scales)
        if zp is not None:
            layer.zeros.copy_((zp.reshape(out_f, -1).to(torch.int16) + 128).to(torch.uint8))
    if bias is not None:
        layer.bias.copy_(bias)
    return layer


def load_ctensors(path: str | Path, *, name: str | None = None) -> LoadedModel:
    """The model in compressed-tensors directory ``path``, its quantized linears packed."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer

    path = Path(path).expanduser()
    q = quant_config(path)
    if q is None:
        raise FormatError(f"{str(path)!r} has no compressed-tensors quantization_config in config.json")
    _check(q, path.name)
    cfg = AutoConfig.from_pretrained(path)
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    model = empty_model(cfg)
    state: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        state.update(load_file(str(f)))
    if any(k.endswith((".weight_g_idx", ".input_scale", ".input_zero_point")) for k in state):
        raise FormatError(f"{path.name}: act-order group indices or static activation scales are not read")
    w8a8 = any(g.get("input_activations") for g in (q.get("config_groups") or {}).values())
    quantized = sorted({k.rsplit(".", 1)[0] for k in state if k.endswith(".weight_scale")})
    for mod in quantized:
        t = {k.rsplit(".", 1)[1]: state.pop(k) for k in [k for k in state if k.rsplit(".", 1)[0] == mod]}
        bias = t.pop("bias", None)
        layer = _packed(mod, t, bias) if "weight_packed" in t else _int8(mod, t, bias, w8a8)
        set_module(model, mod, layer)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = getattr(cfg, "tie_word_embeddings", False)
    missing = [k for k in missing if not (tied and k == "lm_head.weight") and k.rsplit(".", 1)[0] not in quantized]
    if missing or unexpected:
        raise FormatError(f"{path.name}: tensors {'missing' if missing else 'unexpected'}: "
                          f"{(missing or unexpected)[:3]}")
    if tied and isinstance(model.lm_head, nn.Linear):
        model.tie_weights()
    tok = AutoTokenizer.from_pretrained(path) if (path / "tokenizer_config.json").is_file() else None
    fmts = sorted({(g.get("format") or q.get("format")) for g in (q.get("config_groups") or {}).values()})
    return LoadedModel(name=name or path.name, model=model, tokenizer=tok, kind="causal-lm", source=str(path),
                       info={"format": "compressed-tensors", "ctensors_formats": ", ".join(fmts),
                             "ctensors_version": q.get("version")})


__all__ = ["FORMATS", "load_ctensors", "quant_config"]
