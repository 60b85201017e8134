"""Loading a local Hugging Face model directory, and what a loaded model is.

``LoadedModel`` is what every measurement takes (the module, its tokenizer, kind and
provenance); ``load_hf_dir`` reads a directory written by ``save_pretrained`` without the
network, refusing (``ModelLoadError``, one line) a missing, corrupt or incomplete one. The
named models (``harness.models.zoo``) and the converted real model
(``harness.models.real``) load through it; this module imports nothing else from
``harness.models``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

Kind = Literal["causal-lm", "encoder"]


class ModelLoadError(ValueError):
    """A model that cannot be loaded: missing, corrupt, or of an unsupported type."""


@dataclass
class LoadedModel:
    """A model ready to evaluate, with what the measurements need to know about it."""

    name: str
    model: torch.nn.Module
    tokenizer: Any
    kind: Kind
    source: str
    accuracy_na: str | None = None  # reason accuracy metrics are N/A (e.g. "random weights")
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self):
        return self.model.config


def load_hf_dir(path: Path, name: str, dtype: torch.dtype, *, trust_remote_code: bool = False,
                kind: Kind | None = None) -> LoadedModel:
    """The model in HF directory ``path`` (eval mode) as ``name``; ``kind`` is read from the
    config's architectures when not given."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    if not path.is_dir():
        raise ModelLoadError(f"model directory {str(path)!r} does not exist")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{str(path)!r} has no config.json; not a Hugging Face model directory")
    weights = list(path.glob("*.safetensors")) + list(path.glob("*.bin"))
    if not weights:
        raise ModelLoadError(f"{str(path)!r} has no weights (*.safetensors or *.bin)")
    try:
        cfg = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        if kind is None:
            archs = cfg.architectures or []
            kind = "causal-lm" if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs) else "encoder"
        cls = AutoModelForCausalLM if kind == "causal-lm" else AutoModel
        model, loading = cls.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code,
                                             output_loading_info=True)
        missing = sorted(loading.get("missing_keys") or [])
        if missing:  # transformers would leave them randomly initialised: every figure would be wrong
            raise ModelLoadError(f"{str(path)!r}: {len(missing)} weight(s) missing from the checkpoint "
                                 f"(e.g. {missing[0]!r}) would be randomly initialised; refusing to load")
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ModelLoadError:
        raise
    except Exception as e:  # corrupt safetensors, bad json, unknown architecture
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelLoadError(f"cannot load model from {str(path)!r}: {msg}") from e
    model.eval()
    return LoadedModel(name=name, model=model, tokenizer=tok, kind=kind, source=str(path))


__all__ = ["Kind", "LoadedModel", "ModelLoadError", "load_hf_dir"]
