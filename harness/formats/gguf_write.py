"""Write a Llama-family model to a ``.gguf`` file with the harness's own codes.

Each tensor goes in as what it is: QuantLinear / QuantEmbedding codes as Q4_0 (symmetric
int4, and int3/int2 in 4-bit blocks), Q4_1 (asymmetric, and GGUF's own Q4_1 imported
here) or Q8_0 (int8), with the stored fp16 scales (``gguf_codec``); GGUF blocks kept by
``harness.layers.ggml`` as they were read; dense weights as F32/F16/BF16, as stored; norms
and biases as F32. Anything GGUF cannot hold exactly (codebooks, sparsity, low-rank
factors, AWQ input scales, groups off the 32-value grid) is refused in one line: nothing
is requantized. Names, q/k row order and hyperparameters follow llama.cpp's
``convert_hf_to_gguf.py`` (``harness.formats.llama``). The file is written to a temporary
sibling and renamed into place.
"""
from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.formats import FormatError, llama
from harness.formats import gguf_codec as codec
from harness.formats.gguf_vocab import write_vocab
from harness.layers.base import CompressedModule
from harness.layers.embedding import QuantEmbedding
from harness.layers.ggml import INSTALL, GGUFEmbedding, GGUFLinear
from harness.layers.quant import QuantLinear
from harness.primitives.packing import unpack

_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
            "mlp.up_proj", "mlp.down_proj")
_NORMS = ("input_layernorm", "post_attention_layernorm")


def _dense(w: torch.Tensor) -> tuple[str, np.ndarray]:
    w = w.detach().cpu().contiguous()
    if w.dtype == torch.float32:
        return "F32", w.numpy()
    if w.dtype == torch.float16:
        return "F16", w.numpy()
    if w.dtype == torch.bfloat16:
        return "BF16", w.view(torch.uint8).numpy()
    raise FormatError(f"dense {w.dtype} weights have no GGUF type; {codec.TAKES}")


def _packed(name: str, mod: nn.Module, asym: str, notes: list[str]) -> tuple[str, np.ndarray]:
    """The GGUF type and bytes of a weight-holding module."""
    if isinstance(mod, (nn.Linear, nn.Embedding)):
        return _dense(mod.weight)
    if isinstance(mod, (GGUFLinear, GGUFEmbedding)):
        return mod.qtype, mod.blocks.detach().cpu().numpy()
    if isinstance(mod, (QuantLinear, QuantEmbedding)):
        if getattr(mod, "input_scale", None) is not None:
            raise FormatError(f"{name}: AWQ input scales (a float per input channel) have no GGUF tensor; "
                              f"{codec.TAKES}")
        width = mod.in_features if isinstance(mod, QuantLinear) else mod.embedding_dim
        codes = unpack(mod.qweight, mod.bits, width)
        qtype, blk, note = codec.plan(name, codes, mod.scales, mod.zeros, getattr(mod, "mins", None), mod.bits,
                                      mod.group, asym=asym)
        if note:
            notes.append(note)
        return qtype, codec.encode(blk, qtype).cpu().numpy()
    kind = mod.layer_name if isinstance(mod, CompressedModule) else type(mod).__name__
    raise FormatError(f"{name}: {kind} has no GGUF type; {codec.TAKES}")


def _shares(head: nn.Module, emb: nn.Module) -> bool:
    """True when the output head reads the embedding's stored tensor (write it once)."""
    def first(m: nn.Module) -> torch.Tensor | None:
        for attr in ("qweight", "blocks", "weight"):
            t = m._buffers.get(attr) if attr in m._buffers else m._parameters.get(attr)
            if t is not None:
                return t
        return None
    a, b = first(head), first(emb)
    return a is not None and b is not None and a.data_ptr() == b.data_ptr() and a.shape == b.shape


def tensors(model: nn.Module, *, asym: str = "exact") -> tuple[dict[str, tuple[str, np.ndarray]], list[str]]:
    """{GGUF name: (ggml type, array)} of ``model`` in llama.cpp's layout, and the notes."""
    _, permuted = llama.check_model(model)
    cfg, notes = model.config, []
    out: dict[str, tuple[str, np.ndarray]] = {}

    def add(hf: str, mod: nn.Module) -> None:
        qtype, data = _packed(hf, mod, asym, notes)
        bias = getattr(mod, "bias", None)
        heads = llama.qk_heads(hf + ".weight", cfg)
        order = None if heads is None else llama.qk_order(data.shape[0], heads).numpy()
        out[llama.gguf_name(hf + ".weight")] = (qtype, data if order is None else np.ascontiguousarray(data[order]))
        if isinstance(bias, torch.Tensor):
            b = bias.detach().float().cpu().numpy()
            out[llama.gguf_name(hf + ".bias")] = ("F32", b if order is None else np.ascontiguousarray(b[order]))

    emb = model.get_submodule("model.embed_tokens")
    add("model.embed_tokens", emb)
    for i in range(cfg.num_hidden_layers):
        for norm in _NORMS:
            hf = f"model.layers.{i}.{norm}.weight"
            out[llama.gguf_name(hf)] = ("F32", model.get_parameter(hf).detach().float().cpu().numpy())
        for lin in _LINEARS:
            add(f"model.layers.{i}.{lin}", model.get_submodule(f"model.layers.{i}.{lin}"))
    out["output_norm.weight"] = ("F32", model.get_parameter("model.norm.weight").detach().float().cpu().numpy())
    head = model.get_submodule("lm_head")
    if not _shares(head, emb):  # llama.cpp reads token_embd when output.weight is absent
        add("lm_head", head)
    return out, notes


def _summary(notes: list[str]) -> list[str]:
    """Per-tensor notes folded: 'what (n tensors, e.g. name[, max |dw| worst])'."""
    groups: dict[str, list[str]] = {}
    worst: dict[str, float] = {}
    for n in notes:
        name, _, what = n.partition(": ")
        what, _, err = what.partition(" (max |dw| ")
        groups.setdefault(what, []).append(name)
        if err:
            worst[what] = max(worst.get(what, 0.0), float(err.rstrip(")")))
    return [f"{what} ({len(names)} tensor{'s' * (len(names) > 1)}, e.g. {names[0]}"
            + (f"; max |dw| {worst[what]:.3g})" if what in worst else ")") for what, names in groups.items()]


def write_gguf(model: nn.Module, path: str | Path, *, tokenizer: Any = None, asym: str = "exact",
               name: str | None = None, tokenizer_pre: str | None = None) -> dict[str, Any]:
    """Write ``model`` to ``path``; returns {"path", "bytes", "tensor_bytes", "types", "notes"}."""
    try:
        import gguf
    except ImportError:
        raise FormatError(f"GGUF export needs the gguf package: {INSTALL}") from None
    arch, _ = llama.check_model(model)
    cfg = model.config
    table, notes = tensors(model, asym=asym)
    path = Path(path).expanduser()
    if path.is_dir():
        raise FormatError(f"{str(path)!r} is a directory; give a .gguf file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp, arch)
        w.add_name(name or getattr(cfg, "_name_or_path", None) or "harness-export")
        for key, value in llama.metadata(cfg).items():
            getattr(w, f"add_{key}")(value)
        types = Counter(q for n, (q, _) in table.items() if n.endswith(".weight") and not n.endswith("norm.weight"))
        main = types.most_common(1)[0][0]
        ftype = {"F32": "ALL_F32", "F16": "MOSTLY_F16"}.get(main, f"MOSTLY_{main}")
        if hasattr(gguf.LlamaFileType, ftype):
            w.add_file_type(int(getattr(gguf.LlamaFileType, ftype)))
        if any(q not in ("F32", "F16", "BF16") for q in types):
            w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        vocab = ("no tokenizer written: llama.cpp needs one (pass tokenizer=)" if tokenizer is None else
                 write_vocab(w, tokenizer, int(cfg.vocab_size), pre=tokenizer_pre))
        for tname, (qtype, data) in table.items():
            raw = None if qtype in ("F32", "F16") else gguf.GGMLQuantizationType[qtype]
            w.add_tensor(tname, data, raw_dtype=raw)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {"path": str(path), "bytes": path.stat().st_size,
            "tensor_bytes": int(sum(d.nbytes for _, d in table.values())),
            "types": dict(Counter(q for q, _ in table.values())), "notes": [*_summary(notes), vocab]}


__all__ = ["tensors", "write_gguf"]
