"""``harness.export(model, fmt, path)``: write a (compressed) model as another tool's artifact.

Formats: ``gguf`` (a ``.gguf`` file for llama.cpp, ``gguf_write``) and
``compressed-tensors`` (a Hugging Face directory that vLLM and transformers load,
``ctensors``). The command line's ``--export FMT[,KEY=VALUE...]:PATH`` is parsed by
``parse_target`` before any work, so a bad target fails in a second.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.formats import FormatError

FORMATS = ("gguf", "compressed-tensors")
ALIASES = {"ct": "compressed-tensors", "compressed_tensors": "compressed-tensors"}
OPTIONS = {"gguf": {"asym": ("exact", "q8_0", "round"), "tokenizer_pre": None, "name": None},
           "compressed-tensors": {}}


def _format(fmt: str) -> str:
    fmt = ALIASES.get(fmt.strip().lower(), fmt.strip().lower())
    if fmt not in FORMATS:
        raise FormatError(f"export format {fmt!r} is not known; choose one of {', '.join(FORMATS)}")
    return fmt


def check_options(fmt: str, options: dict[str, Any]) -> None:
    allowed = OPTIONS[fmt]
    for key, value in options.items():
        if key not in allowed:
            raise FormatError(f"{fmt} export has no option {key!r}"
                              + (f"; it takes {', '.join(allowed)}" if allowed else "; it takes none"))
        if allowed[key] is not None and value not in allowed[key]:
            raise FormatError(f"{fmt} export: {key}={value!r}; choose one of {', '.join(allowed[key])}")


def parse_target(text: str) -> tuple[str, Path, dict[str, str]]:
    """``gguf:out.gguf`` or ``gguf,asym=q8_0:out.gguf`` -> (format, path, options)."""
    head, sep, path = text.partition(":")
    if not sep or not path:
        raise FormatError(f"--export {text!r}: give FORMAT:PATH, e.g. gguf:model.gguf or compressed-tensors:DIR")
    fmt, *opts = head.split(",")
    fmt = _format(fmt)
    options = {}
    for o in opts:
        key, eq, value = o.partition("=")
        if not eq:
            raise FormatError(f"--export option {o!r}: give KEY=VALUE")
        options[key.strip()] = value.strip()
    check_options(fmt, options)
    return fmt, Path(path).expanduser(), options


def export(model: Any, fmt: str, path: str | Path, *, tokenizer: Any = None, **options: Any) -> dict[str, Any]:
    """Write ``model`` (an nn.Module, a LoadedModel or a CompressionResult) as ``fmt`` at
    ``path``; returns what was written (path, bytes, tensor types, notes). A tensor the format
    cannot hold exactly raises a one-line ``FormatError``."""
    fmt = _format(fmt)
    check_options(fmt, options)
    from torch import nn

    module = model if isinstance(model, nn.Module) else model.model  # a LoadedModel or CompressionResult
    info = {} if isinstance(model, nn.Module) else (getattr(model, "info", None) or {})
    if tokenizer is None and not isinstance(model, nn.Module):
        tokenizer = getattr(model, "tokenizer", None)
    if fmt == "gguf":
        from harness.formats.gguf_write import write_gguf

        if "tokenizer_pre" not in options and info.get("gguf_tokenizer_pre"):
            options["tokenizer_pre"] = info["gguf_tokenizer_pre"]
        return write_gguf(module, path, tokenizer=tokenizer, **options)
    from harness.formats.ctensors import write_ctensors

    return write_ctensors(module, path, tokenizer=tokenizer, **options)


__all__ = ["FORMATS", "check_options", "export", "parse_target"]
