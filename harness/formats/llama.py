"""The Llama family as llama.cpp names it: tensor names, the q/k row order, hyperparameters.

llama.cpp's ``convert_hf_to_gguf.py`` is the reference: Llama, Mistral and SmolLM2 are
written as ``general.architecture = llama`` with the q and k projections' rows permuted
(``LlamaModel.permute``: llama.cpp's rope pairs dimensions ``(2i, 2i+1)`` of a head, where
Hugging Face's rotate_half pairs ``(i, i + d/2)``); Qwen2 as ``qwen2`` (neox rope, no
permutation, q/k/v biases). The permutation moves whole rows, so it is exact on quantized
blocks, which lie along a row.
"""
from __future__ import annotations

import re
from typing import Any

import torch

from harness.formats import FormatError

# Hugging Face model_type -> (GGUF architecture, q/k rows permuted)
ARCHS = {"llama": ("llama", True), "mistral": ("llama", True), "qwen2": ("qwen2", False)}
# GGUF architecture -> the transformers classes that rebuild it
HF_CLASSES = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "mistral": ("MistralConfig", "MistralForCausalLM"),
              "qwen2": ("Qwen2Config", "Qwen2ForCausalLM")}
PERMUTED = {"llama", "mistral"}
TAKES = "Llama-family models (Llama, Mistral, Qwen2, SmolLM2)"

_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
          "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
          "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
          "ffn_down": "mlp.down_proj"}
_HF_TOP = {v: k for k, v in _TOP.items()}
_HF_BLOCK = {v: k for k, v in _BLOCK.items()}


def hf_name(gguf_name: str) -> str:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``."""
    base, _, leaf = gguf_name.rpartition(".")
    if base in _TOP:
        return f"{_TOP[base]}.{leaf}"
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)", base)
    if m and m.group(2) in _BLOCK:
        return f"model.layers.{m.group(1)}.{_BLOCK[m.group(2)]}.{leaf}"
    raise FormatError(f"GGUF tensor {gguf_name!r} has no place in a Llama-family model "
                      f"(the harness reads {TAKES})")


def gguf_name(hf: str) -> str:
    """``model.layers.3.self_attn.q_proj.weight`` -> ``blk.3.attn_q.weight``."""
    base, _, leaf = hf.rpartition(".")
    if base in _HF_TOP:
        return f"{_HF_TOP[base]}.{leaf}"
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", base)
    if m and m.group(2) in _HF_BLOCK:
        return f"blk.{m.group(1)}.{_HF_BLOCK[m.group(2)]}.{leaf}"
    raise FormatError(f"tensor {hf!r} has no GGUF name in llama.cpp's Llama layout")


def qk_heads(hf: str, cfg: Any) -> int | None:
    """Heads whose rows llama.cpp permutes in tensor ``hf`` (None: not permuted)."""
    if cfg.model_type not in PERMUTED:
        return None
    if ".q_proj." in hf:
        return int(cfg.num_attention_heads)
    if ".k_proj." in hf:
        return int(cfg.num_key_value_heads)
    return None


def qk_order(rows: int, heads: int) -> torch.Tensor:
    """Row order of llama.cpp's permutation: ``gguf_rows = hf_rows[order]``
    (``LlamaModel.permute``: ``w.reshape(heads, 2, d/2, ...).swapaxes(1, 2)``)."""
    if rows % (2 * heads):
        raise FormatError(f"{rows} rows do not split into {heads} rope heads")
    return torch.arange(rows).reshape(heads, 2, rows // heads // 2).transpose(1, 2).reshape(-1)


def rope_theta(cfg: Any) -> float:
    params = getattr(cfg, "rope_parameters", None) or {}
    kind = params.get("rope_type", "default") if isinstance(params, dict) else "default"
    scaling = getattr(cfg, "rope_scaling", None)
    if kind != "default" or (isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type")) not in
                             (None, "default")):
        raise FormatError(f"rope scaling {kind if kind != 'default' else scaling!r} is not written; GGUF export "
                          "takes the default rope")
    theta = getattr(cfg, "rope_theta", None) or params.get("rope_theta")
    return float(theta if theta is not None else 10000.0)


def head_dim(cfg: Any) -> int:
    return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)


def check_model(model: Any) -> tuple[str, bool]:
    """(GGUF architecture, permuted) of ``model``, or a one-line refusal."""
    cfg = getattr(model, "config", None)
    kind = getattr(cfg, "model_type", None)
    if kind not in ARCHS:
        raise FormatError(f"GGUF export takes {TAKES}; this model is {kind or type(model).__name__!r}")
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise FormatError(f"GGUF's {kind} graph uses silu; this model's hidden_act is {cfg.hidden_act!r}")
    if getattr(cfg, "mlp_bias", False):
        raise FormatError("llama.cpp's Llama graph has no MLP biases; this model has mlp_bias=True")
    return ARCHS[kind]


def metadata(cfg: Any) -> dict[str, Any]:
    """Hyperparameters as llama.cpp's writer names them (``GGUFWriter.add_*`` arguments)."""
    meta = {"context_length": int(cfg.max_position_embeddings), "embedding_length": int(cfg.hidden_size),
            "block_count": int(cfg.num_hidden_layers), "feed_forward_length": int(cfg.intermediate_size),
            "head_count": int(cfg.num_attention_heads),
            "head_count_kv": int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads),
            "rope_freq_base": rope_theta(cfg), "layer_norm_rms_eps": float(cfg.rms_norm_eps),
            "vocab_size": int(cfg.vocab_size)}
    d = head_dim(cfg)
    if cfg.model_type in PERMUTED:
        meta["rope_dimension_count"] = d
    if d != cfg.hidden_size // cfg.num_attention_heads:
        meta["key_length"] = meta["value_length"] = d
    return meta


def hf_config(arch: str, kv: dict[str, Any], *, vocab: int, tied: bool, q_bias: bool) -> Any:
    """The transformers config of a GGUF file's hyperparameters ``kv`` (keys without the
    ``{arch}.`` prefix)."""
    import transformers

    if arch not in HF_CLASSES:
        raise FormatError(f"GGUF architecture {arch!r} is not read; the harness reads {TAKES} "
                          f"(architectures {', '.join(sorted(HF_CLASSES))})")
    heads = int(kv["attention.head_count"])
    args = dict(vocab_size=int(kv.get("vocab_size", vocab)), hidden_size=int(kv["embedding_length"]),
                intermediate_size=int(kv["feed_forward_length"]), num_hidden_layers=int(kv["block_count"]),
                num_attention_heads=heads, num_key_value_heads=int(kv.get("attention.head_count_kv", heads)),
                max_position_embeddings=int(kv.get("context_length", 2048)),
                rms_norm_eps=float(kv.get("attention.layer_norm_rms_epsilon", 1e-6)),
                tie_word_embeddings=tied)
    if "attention.key_length" in kv:
        args["head_dim"] = int(kv["attention.key_length"])
    theta = float(kv.get("rope.freq_base", 10000.0))
    args["rope_parameters"] = {"rope_theta": theta, "rope_type": "default"}
    if arch != "qwen2":
        args["attention_bias"] = q_bias
    cfg_cls, model_cls = HF_CLASSES[arch]
    cfg = getattr(transformers, cfg_cls)(**args)
    if not getattr(cfg, "rope_parameters", None):  # transformers 4.x reads rope_theta
        cfg.rope_theta = theta
    cfg.architectures = [model_cls]
    return cfg


def empty_model(cfg: Any) -> Any:
    """The ``cfg.architectures[0]`` model with uninitialised weights (every one is loaded next)."""
    import transformers

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        from transformers.modeling_utils import no_init_weights
    cls = getattr(transformers, (getattr(cfg, "architectures", None) or [""])[0], None)
    with no_init_weights():
        if cls is None:  # a config without architectures: the causal LM of its model_type
            return transformers.AutoModelForCausalLM.from_config(cfg).eval()
        return cls(cfg).eval()


__all__ = ["ARCHS", "HF_CLASSES", "PERMUTED", "TAKES", "check_model", "empty_model", "gguf_name", "head_dim",
           "hf_config", "hf_name", "metadata", "qk_heads", "qk_order", "rope_theta"]
