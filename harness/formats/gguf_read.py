"""Load a ``.gguf`` file into the harness's packed layers, storage-exact.

Q8_0 / Q4_0 / Q4_1 tensors become QuantLinear (and Q8_0 / Q4_0 embeddings QuantEmbedding)
with the file's codes and fp16 scales (``gguf_codec``); F32 stays a dense float32 tensor;
every other type (K-quants, Q5_x, F16, BF16, IQ ...) keeps its blocks in a
``harness.layers.ggml`` layer decoded by gguf's reference. So the model's stored tensors
are the file's tensor bytes, which ``size.*`` then counts, and its weights are gguf's own
dequantization bit for bit. A head tied to the embedding (no ``output.weight``) shares the
embedding's stored tensors. The tokenizer comes from the file's metadata (transformers'
GGUF converter) or from ``tokenizer=``.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.formats import FormatError, llama
from harness.formats import gguf_codec as codec
from harness.layers.base import set_module
from harness.layers.embedding import QuantEmbedding
from harness.layers.ggml import INSTALL, GGUFEmbedding, GGUFLinear
from harness.layers.quant import QuantLinear
from harness.models.hf import LoadedModel
from harness.primitives.packing import pack


def gguf_file(path: str | Path) -> Path | None:
    """``path`` itself when it is a ``.gguf`` file, the one ``.gguf`` inside a directory,
    None when it is neither (several in one directory: a one-line refusal)."""
    p = Path(path).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return p
    if p.is_dir() and not (p / "config.json").is_file() and not (p / "harness.json").is_file():
        found = sorted(p.glob("*.gguf"))
        if len(found) > 1:
            raise FormatError(f"{str(p)!r} holds {len(found)} GGUF files ({', '.join(f.name for f in found[:3])}...); "
                              "give the file")
        return found[0] if found else None
    return None


def _reader(path: Path):
    try:
        import gguf
    except ImportError:
        raise FormatError(f"reading {path.name} needs the gguf package: {INSTALL}") from None
    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - a corrupt or truncated file, whatever numpy raised
        raise FormatError(f"cannot read GGUF file {str(path)!r}: {str(e).splitlines()[0] if str(e) else e}") from None


def _value(field) -> Any:
    v = field.contents()
    return v.item() if isinstance(v, np.generic) else v


def _tensor(t) -> tuple[str, torch.Tensor, tuple[int, ...]]:
    """(ggml type name, the stored bytes or F32 values, [rows, width] shape) of a reader tensor."""
    shape = tuple(int(n) for n in reversed(t.shape.tolist()))
    data = torch.from_numpy(np.array(t.data))
    qtype = t.tensor_type.name
    if qtype == "F16" and len(shape) == 2:  # a matrix keeps its bytes; a 1-D F16 tensor is read as values
        data = data.view(torch.uint8).reshape(*shape[:-1], -1)
    elif qtype not in ("F32", "F16"):
        data = data.reshape(*shape[:-1], -1)
    return qtype, data, shape


def _linear(name: str, qtype: str, data: torch.Tensor, shape: tuple[int, ...], bias: torch.Tensor | None
            ) -> nn.Module:
    out_f, in_f = shape
    if qtype == "F32":
        lin = nn.Linear(in_f, out_f, bias=bias is not None)
        lin.weight.data = data.reshape(out_f, in_f)
    elif qtype in codec.EXACT:
        bits, sym, mins = codec.EXACT[qtype]
        c = codec.decode(data, qtype, in_f)
        lin = QuantLinear(in_f, out_f, bits, codec.QK, sym, bias=bias is not None, mins=mins)
        lin.qweight.copy_(pack(c.codes, bits))
        lin.scales.copy_(c.scales)
        if mins:
            lin.mins.copy_(c.mins)
    else:
        lin = GGUFLinear(in_f, out_f, qtype, bias=bias is not None)
        lin.blocks.copy_(data)
    if isinstance(lin, nn.Linear) and bias is not None:
        lin.bias.data = bias.float()
    elif bias is not None:
        lin.bias.copy_(bias)
    return lin


def _embedding(qtype: str, data: torch.Tensor, shape: tuple[int, ...]) -> nn.Module:
    rows, dim = shape
    if qtype == "F32":
        emb = nn.Embedding(rows, dim)
        emb.weight.data = data.reshape(rows, dim)
        return emb
    if qtype in ("Q8_0", "Q4_0"):
        c = codec.decode(data, qtype, dim)
        emb = QuantEmbedding(rows, dim, c.bits, codec.QK, True)
        emb.qweight.copy_(pack(c.codes, c.bits))
        emb.scales.copy_(c.scales)
        return emb
    emb = GGUFEmbedding(rows, dim, qtype)  # Q4_1's float minimum, K-quants, F16 ...
    emb.blocks.copy_(data)
    return emb


def _tied_head(emb: nn.Module) -> nn.Module:
    """An output head that reads the embedding's stored tensors (no copy)."""
    rows, dim = (emb.num_embeddings, emb.embedding_dim)
    if isinstance(emb, QuantEmbedding):
        head = QuantLinear(dim, rows, emb.bits, emb.group, True)
        head.qweight, head.scales = emb.qweight, emb.scales
    elif isinstance(emb, GGUFEmbedding):
        head = GGUFLinear(dim, rows, emb.qtype)
        head.blocks = emb.blocks
    else:
        head = nn.Linear(dim, rows, bias=False)
        head.weight = emb.weight
    return head


def _tokenizer(path: Path, fields: dict[str, Any], tokenizer: Any) -> Any:
    if tokenizer is not None:
        return tokenizer
    if "tokenizer.ggml.model" not in fields:
        raise FormatError(f"{path.name} carries no tokenizer (tokenizer.ggml.*); pass tokenizer=")
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as e:  # noqa: BLE001 - an unsupported tokenizer type, whatever transformers raised
        raise FormatError(f"{path.name}: transformers cannot convert its tokenizer "
                          f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); pass tokenizer=") from None


def load_gguf(path: str | Path, *, tokenizer: Any = None, name: str | None = None) -> LoadedModel:
    """The Llama-family model in GGUF file ``path`` (or the one in directory ``path``)."""
    file = gguf_file(path)
    if file is None:
        raise FormatError(f"{str(path)!r} is not a .gguf file or a directory holding one")
    reader = _reader(file)
    fields = {k: f for k, f in reader.fields.items()}
    arch = _value(fields["general.architecture"]) if "general.architecture" in fields else None
    kv = {k[len(arch) + 1:]: _value(f) for k, f in fields.items() if arch and k.startswith(arch + ".")}
    tensors = {t.name: _tensor(t) for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise FormatError(f"{file.name} has no token_embd.weight; not a {llama.TAKES} GGUF file")
    cfg = llama.hf_config(arch, kv, vocab=tensors["token_embd.weight"][2][0], tied="output.weight" not in tensors,
                          q_bias="blk.0.attn_q.bias" in tensors)
    for key, attr in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                      ("padding_token_id", "pad_token_id")):
        if f"tokenizer.ggml.{key}" in fields:
            setattr(cfg, attr, int(_value(fields[f"tokenizer.ggml.{key}"])))
    model = llama.empty_model(cfg)
    wanted = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    by_hf = {llama.hf_name(n): v for n, v in tensors.items()}
    for hf, (_, _, shape) in by_hf.items():
        if wanted.get(hf, shape) != shape or hf not in wanted:
            raise FormatError(f"{file.name}: tensor {llama.gguf_name(hf)} {list(shape)} does not fit the {arch} model "
                              f"its metadata describes ({list(wanted[hf]) if hf in wanted else 'no such tensor'})")
    for hf in [n for n in by_hf if n.endswith(".weight") and llama.qk_heads(n, cfg) is not None]:
        qtype, data, shape = by_hf[hf]  # undo llama.cpp's q/k row order: whole rows, exact
        order = torch.argsort(llama.qk_order(shape[0], llama.qk_heads(hf, cfg)))
        by_hf[hf] = (qtype, data[order].contiguous(), shape)
        if (b := by_hf.get(hf[:-len("weight")] + "bias")) is not None:
            by_hf[hf[:-len("weight")] + "bias"] = (b[0], b[1][order].contiguous(), b[2])
    for hf, (qtype, data, shape) in by_hf.items():
        module_name = hf.rpartition(".")[0]
        if hf == "model.embed_tokens.weight":
            set_module(model, module_name, _embedding(qtype, data, shape))
        elif len(shape) == 2:
            b = by_hf.get(module_name + ".bias")
            bias = None if b is None else b[1].float()
            set_module(model, module_name, _linear(hf, qtype, data, shape, bias))
        elif qtype not in ("F32", "F16"):
            raise FormatError(f"{file.name}: 1-D tensor {hf} is {qtype}; the harness reads F32/F16 norms and biases")
        elif not hf.endswith(".bias"):  # biases went in with their linear
            model.get_parameter(hf).data = data.float()
    missing = sorted(set(wanted) - set(by_hf) - ({"lm_head.weight"} if cfg.tie_word_embeddings else set()))
    if missing:
        raise FormatError(f"{file.name}: {len(missing)} tensor(s) of the {arch} model missing (e.g. {missing[0]})")
    if cfg.tie_word_embeddings:
        set_module(model, "lm_head", _tied_head(model.get_submodule("model.embed_tokens")))
        if not isinstance(model.lm_head, nn.Linear):  # HF would re-tie a .weight the packed head has not
            cfg.tie_word_embeddings = False
    tok = _tokenizer(file, fields, tokenizer)
    types = Counter(t.tensor_type.name for t in reader.tensors)
    info = {"format": "gguf", "gguf": file.name, "gguf_arch": arch,
            "gguf_tensor_bytes": int(sum(int(t.n_bytes) for t in reader.tensors)),
            "gguf_types": ", ".join(f"{k} x{v}" for k, v in types.most_common())}
    if "tokenizer.ggml.pre" in fields:  # written back on export: the harness cannot re-derive llama.cpp's name
        info["gguf_tokenizer_pre"] = _value(fields["tokenizer.ggml.pre"])
    return LoadedModel(name=name or file.stem, model=model.eval(), tokenizer=tok, kind="causal-lm",
                       source=str(file), info=info)


__all__ = ["gguf_file", "load_gguf"]
