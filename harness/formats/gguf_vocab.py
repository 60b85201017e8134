"""A Hugging Face tokenizer as GGUF metadata (``tokenizer.ggml.*``), the way llama.cpp's
``convert_hf_to_gguf.py`` writes a byte-level BPE (``gpt2``) vocabulary: every id's token
text and type, the merges, the special ids and flags (``gguf.SpecialVocab`` reads those
from the saved tokenizer files), the chat template.

``tokenizer.ggml.pre`` names llama.cpp's pre-tokenizer regex. convert_hf_to_gguf picks it
by hashing the tokenizer's output on a test text; the harness does not carry that table,
so it writes the name it is given (a GGUF import passes the one it read) or ``default``,
llama.cpp's GPT-2 regex, which matches the byte-level BPE tokenizers it was written for.
Other tokenizer types (SentencePiece, WordPiece) are refused in one line.
"""
from __future__ import annotations

import json
import tempfile
from typing import Any

from harness.formats import FormatError

TAKES = "byte-level BPE tokenizers (GPT-2 style: SmolLM2, Qwen2, Llama 3)"


def _kind(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise FormatError(f"GGUF export writes {TAKES} from a fast tokenizer; got {type(tokenizer).__name__}")
    spec = json.loads(backend.to_str())
    pre = json.dumps(spec.get("pre_tokenizer") or {})
    if spec["model"]["type"] != "BPE" or "ByteLevel" not in pre:
        raise FormatError(f"GGUF export writes {TAKES}; this tokenizer is {spec['model']['type']} "
                          f"(pre-tokenizer {(spec.get('pre_tokenizer') or {}).get('type')})")
    return "gpt2"


def tokens(tokenizer: Any, n_vocab: int) -> tuple[list[str], list[int]]:
    """Token text and ``gguf.TokenType`` per id ``0 .. n_vocab-1`` (convert_hf_to_gguf's
    ``get_vocab_base``: ids the tokenizer lacks are UNUSED ``[PADi]`` entries)."""
    import gguf

    reverse = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.get_added_vocab()
    decoder = getattr(tokenizer, "added_tokens_decoder", {})
    texts, types = [], []
    for i in range(n_vocab):
        tok = reverse.get(i)
        if tok is None:
            texts.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        if tok in added:
            info = decoder.get(i)
            if info is not None and not info.normalized:
                tok = tokenizer.decode(tokenizer.encode(tok, add_special_tokens=False))
            special = info is not None and info.special
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        texts.append(tok)
    return texts, types


def write_vocab(writer: Any, tokenizer: Any, n_vocab: int, *, pre: str | None = None) -> str:
    """Add ``tokenizer`` to ``writer`` (a ``gguf.GGUFWriter``); returns a note."""
    import gguf

    kind = _kind(tokenizer)
    if len(tokenizer.get_vocab()) > n_vocab:
        raise FormatError(f"the tokenizer has {len(tokenizer.get_vocab())} tokens, the model's embedding {n_vocab}")
    texts, types = tokens(tokenizer, n_vocab)
    writer.add_tokenizer_model(kind)
    writer.add_tokenizer_pre(pre or "default")
    writer.add_token_list(texts)
    writer.add_token_types(types)
    with tempfile.TemporaryDirectory(prefix="harness-vocab-") as d:
        tokenizer.save_pretrained(d)
        special = gguf.SpecialVocab(d, load_merges=True, n_vocab=n_vocab)
        if not special.merges:
            raise FormatError("the BPE tokenizer has no merges to write")
        special.add_to_gguf(writer, quiet=True)
    return f"tokenizer: {kind}, {n_vocab} tokens, {len(special.merges)} merges, pre-tokenizer {pre or 'default'}"


__all__ = ["TAKES", "tokens", "write_vocab"]
