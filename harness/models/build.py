"""Deterministic recipe for ``harness-tiny``: BPE tokenizer + small Llama trained on the
embedded corpus. ``harness models build harness-tiny`` reruns it; the committed
checkpoint records the recipe hash so a rebuild can be compared (validation perplexity
within 1%).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.models import data

CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"


@dataclass(frozen=True)
class TinyRecipe:
    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 512
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    max_position_embeddings: int = 512
    seq_len: int = 128
    batch_size: int = 32
    steps: int = 500
    lr: float = 3e-3
    warmup: int = 40
    weight_decay: float = 0.1
    seed: int = 1234

    def digest(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True) + "".join(
            data.expected_sums()[s] for s in data.SPLITS)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def train_tokenizer(vocab_size: int, out_dir: Path):
    """Byte-level BPE trained on the train split only."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(data.load_split("train").split("\n\n"), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   bos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.save_pretrained(out_dir)
    return fast


def build_tiny(out_dir: Path | None = None, recipe: TinyRecipe = TinyRecipe(),
               log: Callable[[str], None] = print,
               evaluate_ppl: Callable[[torch.nn.Module, Any, int], float] | None = None) -> dict:
    """Train harness-tiny from scratch and write it atomically to ``out_dir``.

    ``evaluate_ppl(model, tokenizer, window)`` gives the validation perplexity recorded in
    ``harness_recipe.json`` (``harness models build`` passes the ``ppl.window`` protocol of
    ``harness.measure.accuracy``; measuring is a higher layer, so it is injected). Without
    it the recipe records ``validation_ppl_window: null``; the weights are the same."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir or CHECKPOINT_DIR / "harness-tiny")
    torch.manual_seed(recipe.seed)
    random.seed(recipe.seed)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=out_dir.parent if out_dir.parent.exists() else None))
    try:
        t0 = time.perf_counter()
        tok = train_tokenizer(recipe.vocab_size, tmp)
        ids = data.token_ids(tok, data.load_split("train"))
        cfg = LlamaConfig(
            vocab_size=recipe.vocab_size, hidden_size=recipe.hidden_size,
            intermediate_size=recipe.intermediate_size, num_hidden_layers=recipe.num_hidden_layers,
            num_attention_heads=recipe.num_attention_heads,
            num_key_value_heads=recipe.num_key_value_heads,
            max_position_embeddings=recipe.max_position_embeddings, tie_word_embeddings=False,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id)
        model = LlamaForCausalLM(cfg)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.95),
                                weight_decay=recipe.weight_decay)
        gen = torch.Generator().manual_seed(recipe.seed)
        n_windows = (len(ids) - 1) // recipe.seq_len
        windows = ids[: n_windows * recipe.seq_len + 1]

        def lr_at(step: int) -> float:
            if step < recipe.warmup:
                return recipe.lr * (step + 1) / recipe.warmup
            p = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
            return recipe.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p)))

        for step in range(recipe.steps):
            starts = torch.randint(0, len(windows) - recipe.seq_len - 1, (recipe.batch_size,), generator=gen)
            batch = torch.stack([windows[s: s + recipe.seq_len + 1] for s in starts.tolist()])
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            loss = model(input_ids=batch[:, :-1], labels=batch[:, :-1]).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if step % 50 == 0 or step == recipe.steps - 1:
                log(f"step {step:4d}  loss {loss.item():.3f}  lr {lr_at(step):.2e}  "
                    f"{time.perf_counter() - t0:.0f}s")
        model.eval()
        val = evaluate_ppl(model, tok, recipe.seq_len) if evaluate_ppl else None
        model.save_pretrained(tmp, safe_serialization=True)
        meta = {"recipe": dataclasses.asdict(recipe), "recipe_hash": recipe.digest(),
                "validation_ppl_window": None if val is None else round(val, 4), "train_tokens": int(len(ids)),
                "train_seconds": round(time.perf_counter() - t0, 1),
                "corpus_sha256": data.expected_sums()}
        (tmp / "harness_recipe.json").write_text(json.dumps(meta, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
        log(f"wrote {out_dir} (validation ppl {'not measured' if val is None else f'{val:.2f}'})")
        return meta
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
