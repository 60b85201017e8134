"""Perplexity through lm-eval: ``loglikelihood_rolling`` via ``HFLM`` on an in-memory model.

The task YAMLs in ``harness/tasks`` serve the embedded corpus split as documents (see
``corpus_task.documents``). lm-eval reports word/byte perplexity; the harness also
derives *token* perplexity ``exp(-sum loglik / tokens)`` from the logged per-document
log-likelihoods, counting tokens with the same tokenizer, so it is comparable with
``ppl.window``.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

TASK_DIR = Path(__file__).resolve().parent.parent / "tasks"
# lm-eval modules that draw progress bars with a module-level ``tqdm`` and no way to turn
# them off from simple_evaluate (TQDM_DISABLE only works if set before tqdm is imported)
_TQDM_USERS = ("lm_eval.api.task", "lm_eval.api.model", "lm_eval.models.huggingface", "lm_eval.evaluator")


def _silent(orig):
    @functools.wraps(orig)
    def make(*args, **kwargs):
        return orig(*args, **{**kwargs, "disable": True})  # callers pass disable= themselves
    return make


@contextlib.contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """Silence lm-eval's progress bars for the duration of one evaluation."""
    saved = []
    for name in _TQDM_USERS:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(mod, "tqdm"):
            saved.append((mod, mod.tqdm))
            mod.tqdm = _silent(mod.tqdm)
    try:
        yield
    finally:
        for mod, orig in saved:
            mod.tqdm = orig


def perplexity_lm_eval(model: torch.nn.Module, tokenizer, split: str = "validation", *,
                       max_length: int = 128, batch_size: int = 8,
                       limit: int | None = None) -> dict[str, Any]:
    """Run the local lm-eval task; returns token ppl plus lm-eval's own metrics."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from harness.registry import Registry

    allowed: Registry[str] = Registry("lm-eval split")
    for s in ("validation", "test"):
        allowed.register(s, s)
    allowed.get(split)
    for name in ("lm-eval", "lm_eval", "lm_eval.evaluator", "lm_eval.api.task"):
        logging.getLogger(name).setLevel(logging.ERROR)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length,
              device=str(next(model.parameters()).device))
    tm = TaskManager(include_path=str(TASK_DIR), include_defaults=False)
    task = f"harness_corpus_{split}"
    with _quiet_progress_bars():
        out = simple_evaluate(model=lm, tasks=[task], task_manager=tm, log_samples=True, limit=limit,
                              verbosity="ERROR", bootstrap_iters=0)
    res = out["results"][task]
    samples = out["samples"][task]
    total_ll, tokens = 0.0, 0
    for s in samples:
        ll = s["resps"][0][0]
        total_ll += float(ll[0] if isinstance(ll, (list, tuple)) else ll)
        tokens += len(tokenizer(s["doc"]["page"], add_special_tokens=False)["input_ids"])
    return {
        "token_perplexity": math.exp(-total_ll / tokens),
        "word_perplexity": res.get("word_perplexity,none"),
        "byte_perplexity": res.get("byte_perplexity,none"),
        "bits_per_byte": res.get("bits_per_byte,none"),
        "documents": len(samples), "tokens": tokens, "max_length": max_length,
    }
