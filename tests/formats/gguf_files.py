"""Small GGUF files written with the gguf package's own writer and reference quantizer, from
random Llamas, independently of harness.formats: names from a literal table, q/k rows
permuted with convert_hf_to_gguf's reshape/swapaxes, blocks from gguf.quants.quantize (or
random bytes for the K-quants, which gguf can decode but not encode)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

INSTALL = "pip install gguf  (or the extra: pip install 'llm-compression-harness[formats]')"

BLOCK = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
         "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
         "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf's LlamaModel.permute."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_tensors(model) -> dict[str, np.ndarray]:
    """{GGUF name: float32 array} of a Llama in llama.cpp's layout."""
    cfg, sd = model.config, {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    out = {"token_embd.weight": sd["model.embed_tokens.weight"], "output_norm.weight": sd["model.norm.weight"]}
    if not cfg.tie_word_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    for i in range(cfg.num_hidden_layers):
        for g, h in BLOCK.items():
            w = sd[f"model.layers.{i}.{h}.weight"]
            if g == "attn_q":
                w = permute(w, cfg.num_attention_heads)
            elif g == "attn_k":
                w = permute(w, cfg.num_key_value_heads)
            out[f"blk.{i}.{g}.weight"] = w
    return out


def random_kquant(rows: int, width: int, qtype) -> np.ndarray:
    """Valid random blocks of a K-quant: random bytes, the fp16 super-block scales set small."""
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(0)
    b = rng.integers(0, 256, (rows, width // block, size), dtype=np.uint8)
    d = rng.uniform(1e-5, 1e-4, (rows, width // block)).astype(np.float16).view(np.uint8).reshape(rows, -1, 2)
    if qtype == gguf.GGMLQuantizationType.Q6_K:  # d is the last two bytes
        b[..., -2:] = d
    else:  # Q4_K / Q5_K: d, dmin first
        b[..., 0:2] = d
        b[..., 2:4] = d
    return b.reshape(rows, -1)


def write(model, path: Path, types: dict[str, str], *, arch: str = "llama", tokenizer=None) -> Path:
    """A GGUF file of ``model``: tensor ``name`` in ``types[key]`` for the first key that is a
    substring of the name (``"*"`` for the rest of the matrices; vectors are F32)."""
    import gguf

    cfg = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(cfg.vocab_size)
    if tokenizer is not None:
        from harness.formats.gguf_vocab import write_vocab

        write_vocab(w, tokenizer, cfg.vocab_size)
    for name, arr in hf_tensors(model).items():
        kind = "F32" if arr.ndim == 1 else next((t for k, t in types.items() if k in name), types.get("*", "F32"))
        qt = gguf.GGMLQuantizationType[kind]
        if kind == "F32":
            w.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float32))
        elif kind == "F16":
            w.add_tensor(name, arr.astype(np.float16))
        elif kind.endswith("_K"):
            w.add_tensor(name, random_kquant(*arr.shape, qt), raw_dtype=qt)
        else:
            w.add_tensor(name, gguf.quants.quantize(arr, qt), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def dense_reference(path: Path):
    """transformers' own GGUF loader: gguf's reference dequantization, its own q/k un-permute."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
