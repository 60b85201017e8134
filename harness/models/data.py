"""The embedded corpus: fixed train / validation / test splits with sha256 checks.

The text is English prose that ships with CPython (see ``corpus_build``), committed so
every machine evaluates on byte-identical data. A changed or truncated file is an error,
never a silent change of the benchmark.
"""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import torch

from harness.registry import Registry

CORPUS_DIR = Path(__file__).parent / "corpus"
SPLITS = ("train", "validation", "test")


class CorruptDataError(ValueError):
    """A corpus split whose bytes do not match the committed checksum."""


_split_names: Registry[str] = Registry("data split")
for _s in SPLITS:
    _split_names.register(_s, _s)


@functools.cache
def expected_sums() -> dict[str, str]:
    return json.loads((CORPUS_DIR / "SHA256SUMS.json").read_text())["sha256"]


@functools.cache
def load_split(name: str) -> str:
    """Return the text of split ``name`` after verifying its sha256."""
    _split_names.get(name)
    path = CORPUS_DIR / f"{name}.txt"
    if not path.is_file():
        raise CorruptDataError(f"corpus split {name!r} is missing: {path}")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected_sums()[name]:
        raise CorruptDataError(
            f"corpus split {name!r} at {path} has sha256 {digest[:12]}…, expected "
            f"{expected_sums()[name][:12]}… (file changed or corrupt)")
    return data.decode("utf-8")


def split_sha256(name: str) -> str:
    load_split(name)
    return expected_sums()[name]


def token_ids(tokenizer, text: str) -> torch.Tensor:
    """Encode ``text`` to a 1-D LongTensor without special tokens."""
    if not text or not text.strip():
        raise ValueError("evaluation text is empty; give a non-empty split or file")
    from transformers import PreTrainedTokenizerBase

    # verbose=False: a corpus is meant to exceed model_max_length; it is windowed afterwards
    quiet = {"verbose": False} if isinstance(tokenizer, PreTrainedTokenizerBase) else {}
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False, **quiet)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


@functools.lru_cache(maxsize=8)
def _cached_ids(tok_key: str, split: str, tokenizer_ref) -> torch.Tensor:
    return token_ids(tokenizer_ref, load_split(split))


def split_ids(tokenizer, split: str) -> torch.Tensor:
    """Token ids of a corpus split, cached per tokenizer."""
    key = getattr(tokenizer, "name_or_path", "") + str(len(tokenizer))
    return _cached_ids(key, split, tokenizer)
