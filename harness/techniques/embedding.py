"""``quant-embed``: store the input token embedding as packed group-wise integer codes.

Linear-layer quantizers (GPTQ, AWQ, RTN) keep the embedding table in full precision, as
their papers do; on a small model that table is a large share of the bytes (a quarter
of harness-tiny's fp32 file, half with its untied head), so a pipeline that must shrink
the whole file quantizes it too, round-to-nearest per row in groups of ``group``
(``layers.embedding.QuantEmbedding``; llama.cpp's ``token_embd`` blocks do the same). A
head tied to the embedding is untied first (its full-precision copy stays and is
counted: quantize it with ``head=true`` on a linear quantizer).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from harness.config import SpecError
from harness.layers.base import set_module
from harness.layers.embedding import QuantEmbedding
from harness.primitives.quant import check_quant_args
from harness.techniques.base import Applied, Technique, register


@dataclass(frozen=True)
class EmbedQuantConfig:
    """bits: 8, 4, 3 or 2; group: embedding dims per scale (none = one per row); sym:
    symmetric (implicit zero) or asymmetric (stored uint8 zero codes)."""

    bits: int = 4
    group: int | None = 64
    sym: bool = True

    def __post_init__(self) -> None:
        check_quant_args(self.bits, self.group)


@register
class QuantEmbed(Technique):
    name = "quant-embed"
    family = "quantization"
    config_cls = EmbedQuantConfig
    storage = "packed"
    suite_specs = ("quant-embed:bits=4,group=64",)
    description = "packed group-wise int8/4/3/2 token embedding (the table linear quantizers keep in fp32)"

    def apply(self, model: nn.Module, calibration=None) -> Applied:
        cfg = self.config
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        if not isinstance(emb, nn.Embedding):
            raise SpecError(f"quant-embed needs an nn.Embedding input embedding; {type(model).__name__} has "
                            f"{type(emb).__name__}")
        name = next(n for n, m in model.named_modules() if m is emb)
        notes = []
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if head is not None and getattr(head, "weight", None) is emb.weight:
            model.config.tie_word_embeddings = False  # the head keeps the full-precision tensor
            notes.append("output head was tied to the embedding: untied, the head keeps the full-precision "
                         "copy (counted in size.bytes)")
        q = QuantEmbedding.from_embedding(emb, bits=cfg.bits, group=cfg.group, sym=cfg.sym)
        set_module(model, name, q)
        nbytes = sum(t.numel() * t.element_size() for t in q.state_dict().values())
        notes.append(f"{name} {q.num_embeddings}x{q.embedding_dim} stored as {cfg.bits}-bit codes, group "
                     f"{cfg.group} ({nbytes} bytes, {8 * nbytes / q.logical_params():.3f} bits/value)")
        return Applied(model, notes)


__all__ = ["EmbedQuantConfig", "QuantEmbed"]
