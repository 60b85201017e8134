"""Artifacts other tools ship, read into and written from the harness's packed layers.

- ``gguf_read``: a ``.gguf`` file (llama.cpp) -> a model whose Q8_0/Q4_0/Q4_1 tensors are
  QuantLinear / QuantEmbedding codes and fp16 scales as stored, every other type kept as
  its GGUF blocks (``harness.layers.ggml``);
- ``gguf_write``: a Llama-family model -> a ``.gguf`` file with the harness's own codes;
- ``ctensors``: compressed-tensors checkpoints (llm-compressor, vLLM), both ways;
- ``export``: ``harness.export(model, fmt, path)``, the one entry for writing.

Nothing here requantizes: a tensor the target cannot hold exactly is refused in one line
(``FormatError``) that names what the target can take. docs/guide/formats.md says what
maps onto what.
"""
from __future__ import annotations


class FormatError(ValueError):
    """An artifact that cannot be read or written exactly (one line, exit 2 on the CLI)."""


__all__ = ["FormatError"]
