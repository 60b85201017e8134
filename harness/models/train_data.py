"""Training data for techniques that train (distillation, GQA uptraining, QAT, recovery).

Calibration windows (``harness.calibration``) are a few dozen random windows: enough to
rank weights, too few to train on without overfitting them. ``training_windows`` gives a
technique a token stream instead:

- the source is the bundled *train* split (``source="train"``; the evaluation splits are
  refused), a UTF-8 text file, or a Hugging Face dataset directory written by
  ``datasets.save_to_disk`` (its ``train`` split's ``text`` column, rows in order);
- the stream is cut into non-overlapping windows of ``seq_len`` tokens, visited in a
  seeded random order (a fresh order per epoch), so a run reproduces bit for bit;
- ``tokens`` is the budget: ``ceil(tokens / seq_len)`` windows. A budget larger than the
  source repeats it (the epochs go into ``describe()``, never hidden).

Techniques reach it through the calibration they are given: ``get_calibration`` keeps the
tokenizer on the ``Calibration``, and ``for_technique(calibration, ...)`` draws the stream
with it. A calibration built by hand (no tokenizer) falls back to its own windows, cycled,
and says so in ``describe()``.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.calibration import Calibration
from harness.config import SpecError, check
from harness.models import data


@dataclass(frozen=True)
class TrainingData(Calibration):
    """Training windows in their training order (``input_ids`` [n, seq_len]) and where they
    came from. A ``Calibration`` too, so the fine-tune helpers take either."""

    source: str = "train"
    tokens: int = 0  # tokens in the windows (the budget rounded up to whole windows)
    source_tokens: int = 0  # tokens the source holds
    epochs: float = 0.0  # passes over the source's windows the budget takes

    def describe(self) -> dict[str, Any]:
        return {"train_source": self.source, "train_tokens": self.tokens, "train_seq_len": self.seq_len,
                "train_seed": self.seed, "train_source_tokens": self.source_tokens,
                "train_epochs": round(self.epochs, 3)}


def _file_ids(tokenizer, path: Path) -> torch.Tensor:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"data={str(path)!r} is not UTF-8 text; give a text file, an HF dataset directory "
                        "or 'train'") from None
    return data.token_ids(tokenizer, text)


def _hf_dir_ids(tokenizer, path: Path, max_tokens: int) -> torch.Tensor:
    """Rows of the ``train`` split's ``text`` column, in order, until ``max_tokens``."""
    if not ((path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file()):
        raise SpecError(f"data={str(path)!r} is a directory but not a Hugging Face dataset "
                        "(no dataset_dict.json / dataset_info.json from datasets.save_to_disk)")
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise SpecError(f"data={str(path)!r} has no 'train' split (splits: {', '.join(ds)})")
        ds = ds["train"]
    if "text" not in ds.column_names:
        raise SpecError(f"data={str(path)!r} has no 'text' column (columns: {', '.join(ds.column_names)})")
    parts: list[torch.Tensor] = []
    total = 0
    for row in ds:
        if row["text"] and row["text"].strip():
            ids = data.token_ids(tokenizer, row["text"])
            parts.append(ids)
            total += ids.numel()
            if total >= max_tokens:
                break
    check(total > 0, f"data={str(path)!r}: the train split holds no text")
    return torch.cat(parts)


@functools.lru_cache(maxsize=8)
def _cached(tok_key: str, source: str, stamp: float, max_tokens: int, tokenizer) -> torch.Tensor:
    if source == "train":
        return data.split_ids(tokenizer, "train")
    path = Path(source)
    return _hf_dir_ids(tokenizer, path, max_tokens) if path.is_dir() else _file_ids(tokenizer, path)


def source_ids(tokenizer, source: str = "train", max_tokens: int = 1 << 62) -> torch.Tensor:
    """Token ids of a training source (cached per tokenizer and file version)."""
    if source in ("validation", "test"):
        raise SpecError(f"data={source!r}: training never reads an evaluation split; "
                        "allowed: train, a text file, or a Hugging Face dataset directory")
    stamp = 0.0
    if source != "train":
        path = Path(source).expanduser()
        if not path.exists():
            raise SpecError(f"data={source!r} does not exist; allowed: train, a text file, "
                            "or a Hugging Face dataset directory")
        source, stamp = str(path), os.stat(path).st_mtime
    key = getattr(tokenizer, "name_or_path", "") + str(len(tokenizer))
    return _cached(key, source, stamp, max_tokens if source != "train" else 0, tokenizer)


def _specials(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text (BERT: [CLS] / [SEP])."""
    build = getattr(tokenizer, "build_inputs_with_special_tokens", None)
    if build is None:
        return [], []
    framed = list(build([-1]))
    i = framed.index(-1)
    return framed[:i], framed[i + 1:]


def training_windows(tokenizer, *, tokens: int, seq_len: int = 128, seed: int = 0,
                     source: str = "train", special_tokens: bool = False) -> TrainingData:
    """``ceil(tokens / seq_len)`` non-overlapping windows of ``source`` in a seeded order.
    ``special_tokens``: each window is framed as the tokenizer frames a text (BERT's
    ``[CLS] ... [SEP]``, the input format encoders were trained and are scored on), the
    text part ``seq_len`` minus those tokens long."""
    check(tokens >= 1, f"token budget tokens={tokens} must be >= 1")
    check(seq_len >= 2, f"seq_len={seq_len} must be >= 2")
    pre, post = _specials(tokenizer) if special_tokens else ([], [])
    full = seq_len
    seq_len -= len(pre) + len(post)
    check(seq_len >= 1, f"seq_len={full} leaves no room for text between {len(pre) + len(post)} special tokens")
    ids = source_ids(tokenizer, source, max_tokens=tokens + seq_len)
    n_src = ids.numel() // seq_len
    if n_src < 1:
        raise SpecError(f"data={source!r} has {ids.numel()} tokens, fewer than one window of seq_len={seq_len}")
    windows = ids[: n_src * seq_len].view(n_src, seq_len)
    need = math.ceil(tokens / full)
    order: list[torch.Tensor] = []
    epoch = 0
    while sum(o.numel() for o in order) < need:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order.append(torch.randperm(n_src, generator=g))
        epoch += 1
    idx = torch.cat(order)[:need]
    chosen = windows[idx]
    if pre or post:
        chosen = torch.cat([torch.tensor(pre, dtype=torch.long).expand(need, -1), chosen,
                            torch.tensor(post, dtype=torch.long).expand(need, -1)], 1)
    return TrainingData(chosen.contiguous(), None, split="train" if source == "train" else "external",
                        seed=seed, source=source, tokens=need * full, source_tokens=int(n_src * seq_len),
                        epochs=need / n_src)


def for_technique(calibration: Calibration | None, *, tokens: int, seq_len: int = 128, seed: int = 0,
                  source: str = "train", special_tokens: bool = False) -> TrainingData:
    """The training stream for a technique given ``calibration``: drawn with the tokenizer
    the calibration came with; without one (a hand-built calibration), its own windows
    cycled to the budget (``source`` then says "calibration windows"). ``source="train"``
    with a calibration drawn from the user's text (``--calibration-text``) trains on that
    text: the user's domain, where the bundled split is the harness's own."""
    if isinstance(calibration, TrainingData):
        return calibration
    if source == "train" and getattr(calibration, "text_file", None):
        source = str(calibration.text_file)
    tok = getattr(calibration, "tokenizer", None)
    if tok is not None:
        return training_windows(tok, tokens=tokens, seq_len=seq_len, seed=seed, source=source,
                                special_tokens=special_tokens)
    if calibration is None:
        raise SpecError("this technique trains and needs training data: pass calibration="
                        "harness.calibration.get_calibration(tokenizer) (it carries the tokenizer)")
    if source != "train":
        raise SpecError(f"data={source!r} needs the tokenizer, but the calibration given has none; "
                        "build it with harness.calibration.get_calibration(tokenizer)")
    need = math.ceil(tokens / calibration.seq_len)
    idx = torch.arange(need) % calibration.n
    return TrainingData(calibration.input_ids[idx], None, split=calibration.split, seed=calibration.seed,
                        source="calibration windows", tokens=need * calibration.seq_len,
                        source_tokens=calibration.n * calibration.seq_len, epochs=need / calibration.n)


__all__ = ["TrainingData", "for_technique", "source_ids", "training_windows"]
