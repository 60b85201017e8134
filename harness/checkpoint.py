"""Save and reload compressed models: safetensors for tensors, JSON for structure.

Layout of a saved directory::

    model.safetensors      every stored tensor, shared tensors once
    config.json            the (possibly shrunk) Hugging Face config
    harness.json           format version, technique spec, module manifest
    tokenizer files        when a tokenizer is given

The manifest lists each compressed module (layer class + constructor args) and the
shape of every plain Linear that differs from what the config builds (structured
pruning), so loading rebuilds the exact module tree, then loads the tensors strictly.
Writes go to a temporary sibling directory renamed into place: no half-written output.
Saving never destroys what it did not write: a non-empty directory that is not a harness
checkpoint is refused, and an existing checkpoint is replaced only with ``overwrite``.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.layers.base import CompressedModule, is_linear, layer_class, linear_shape, set_module

FORMAT = "harness-compressed/1"


class CheckpointError(ValueError):
    """A saved model that is missing, corrupt, or not written by this harness."""


def manifest(model: nn.Module) -> dict[str, Any]:
    layers: dict[str, Any] = {}
    linears: dict[str, list[int]] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, CompressedModule) and mod.layer_name:
            layers[name] = {"layer": mod.layer_name, "args": mod.layer_args()}
        elif is_linear(mod) and not any(name.startswith(p + ".") for p in layers):
            linears[name] = list(linear_shape(mod))
    # Per-module attributes a structural change altered (e.g. OPT's num_heads, GPT-2's
    # split_size after head pruning): modules list them in ``harness_attrs``.
    attrs = {name: dict(mod.harness_attrs) for name, mod in model.named_modules()
             if isinstance(getattr(mod, "harness_attrs", None), dict)}
    return {"layers": layers, "linears": linears, "attrs": attrs}


def is_checkpoint(path: str | Path) -> bool:
    """True when ``path`` is a directory written by ``save_compressed``."""
    meta = Path(path) / "harness.json"
    try:
        return meta.is_file() and json.loads(meta.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_save_target(path: str | Path, *, overwrite: bool = False) -> Path:
    """Refuse (one line) a target that saving would destroy; returns the resolved path.

    Allowed: a new path, an empty directory, or a harness checkpoint with ``overwrite``."""
    given = str(path)
    path = Path(path).expanduser().resolve()
    if not path.exists():
        if path.parent.exists() and not path.parent.is_dir():
            raise CheckpointError(f"cannot save to {given!r}: {str(path.parent)!r} is not a directory")
        return path
    if not path.is_dir():
        raise CheckpointError(f"cannot save to {given!r}: it is an existing file; give a new or empty directory")
    if not any(path.iterdir()):
        return path
    if not is_checkpoint(path):
        raise CheckpointError(f"refusing to save to {given!r}: a non-empty directory that is not a harness "
                              f"checkpoint (give a new or empty directory)")
    if not overwrite:
        raise CheckpointError(f"{given!r} already holds a harness checkpoint; pass --overwrite "
                              f"(overwrite=True) to replace it")
    return path


def save_compressed(model: nn.Module, path: str | Path, *, tokenizer: Any = None,
                    technique: str = "none", extra: dict[str, Any] | None = None,
                    overwrite: bool = False) -> Path:
    """Write ``model`` (compressed or not) to directory ``path`` atomically.

    The checkpoint is written to a temporary sibling and renamed into place, so an
    interrupted save leaves nothing half-written; see ``check_save_target`` for what an
    existing ``path`` may be."""
    from safetensors.torch import save_model

    path = check_save_target(path, overwrite=overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        save_model(model, str(tmp / "model.safetensors"))
        model.config.to_json_file(str(tmp / "config.json"))
        meta = {"format": FORMAT, "technique": technique, "model_class": type(model).__name__,
                "shared": shared_map(model, _stored_names(tmp / "model.safetensors")),
                **manifest(model), **(extra or {})}
        (tmp / "harness.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        _swap_into_place(tmp, path, overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _swap_into_place(tmp: Path, path: Path, overwrite: bool) -> None:
    """Rename ``tmp`` to ``path``; an existing empty directory or (re-checked) checkpoint is
    moved aside first and removed only after the new one is in place."""
    if not path.exists():
        tmp.rename(path)
        return
    check_save_target(path, overwrite=overwrite)  # the target may have changed while we wrote
    if not any(path.iterdir()):
        path.rmdir()
        tmp.rename(path)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
    old.rmdir()
    path.rename(old)
    try:
        tmp.rename(path)
    except OSError:
        old.rename(path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _empty_model(config_path: Path, model_class: str) -> nn.Module:
    import transformers
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(config_path)
    cls = getattr(transformers, model_class, None)
    if cls is None:
        raise CheckpointError(f"unknown model class {model_class!r} in {config_path}")
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        from transformers.modeling_utils import no_init_weights
    # Real (uninitialised) tensors rather than meta: non-persistent buffers such as rotary
    # inverse frequencies are computed by the constructors exactly as on first load.
    with no_init_weights():
        model = cls(cfg)
    return model


def load_compressed(path: str | Path, *, device: str = "cpu") -> nn.Module:
    """Rebuild a model saved by ``save_compressed`` and load its tensors strictly."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    meta_file = path / "harness.json"
    if not meta_file.is_file():
        raise CheckpointError(f"{str(path)!r} is not a saved harness model (no harness.json)")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{meta_file} is not valid JSON: {e}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_file} has format {meta.get('format')!r}; expected {FORMAT!r}")
    model = _empty_model(path, meta["model_class"])
    for name, shape in meta.get("linears", {}).items():
        mod = model.get_submodule(name)
        if list(linear_shape(mod)) != list(shape):
            out_f, in_f = shape
            set_module(model, name, nn.Linear(in_f, out_f, bias=getattr(mod, "bias", None) is not None))
    for name, spec in meta.get("layers", {}).items():
        set_module(model, name, layer_class(spec["layer"]).from_args(spec["args"]))
    for name, attrs in meta.get("attrs", {}).items():
        mod = model.get_submodule(name)
        mod.harness_attrs = dict(attrs)
        for key, value in attrs.items():
            setattr(mod, key, value)
    try:
        state = load_file(str(path / "model.safetensors"), device=device)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path / 'model.safetensors'}: {e}") from None
    model.to(device)
    # Tied / shared tensors are stored once under one name; re-tie by loading into every alias.
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)  # keep stored dtypes
    if unexpected:
        raise CheckpointError(f"{path}: unexpected tensors {unexpected[:3]}...")
    _fill_aliases(model, state, missing, path)
    if hasattr(model, "tie_weights") and getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    return model.eval()


def _fill_aliases(model: nn.Module, state: dict[str, torch.Tensor], missing: list[str], path: Path) -> None:
    """safetensors' save_model drops duplicate names of shared tensors; rebuild the sharing."""
    if not missing:
        return
    # Group parameter names that the saved model said were shared (same data_ptr in the
    # original). Without that record we match by identical shape + same module class name
    # is unsafe, so we rely on harness.json's "shared" map when present.
    meta = json.loads((path / "harness.json").read_text())
    shared: dict[str, str] = meta.get("shared", {})
    still = []
    for name in missing:
        src = shared.get(name)
        if src is None or src not in state:
            still.append(name)
            continue
        mod_path, _, leaf = name.rpartition(".")
        src_mod_path, _, src_leaf = src.rpartition(".")
        src_mod = model.get_submodule(src_mod_path) if src_mod_path else model
        dst_mod = model.get_submodule(mod_path) if mod_path else model
        setattr(dst_mod, leaf, getattr(src_mod, src_leaf))
    tied_ok = getattr(model.config, "tie_word_embeddings", False)
    still = [n for n in still if not (tied_ok and n.endswith("lm_head.weight"))]
    if still:
        raise CheckpointError(f"{path}: tensors missing from model.safetensors: {still[:3]}")


def _stored_names(file: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        return set(f.keys())


def shared_map(model: nn.Module, stored: set[str] | None = None) -> dict[str, str]:
    """Tensors that alias another one: {alias: stored_name}. ``stored`` names the copy
    that was written (safetensors keeps one name per shared storage)."""
    groups: dict[tuple[int, torch.Size], list[str]] = {}
    for name, t in list(model.named_parameters(remove_duplicate=False)) + list(
            model.named_buffers(remove_duplicate=False)):
        if t.numel():
            groups.setdefault((t.data_ptr(), t.shape), []).append(name)
    out: dict[str, str] = {}
    for names in groups.values():
        if len(names) < 2:
            continue
        keep = next((n for n in names if stored is None or n in stored), names[0])
        out.update({n: keep for n in names if n != keep})
    return out
