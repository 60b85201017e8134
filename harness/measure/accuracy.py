"""Accuracy and fidelity.

Protocols
- ``ppl.window``: the GPTQ/wikitext2 protocol. The split is tokenized as one stream, cut
  into non-overlapping windows of ``window`` tokens (a trailing partial window is
  dropped), each window is scored independently, and perplexity is
  ``exp(sum NLL / tokens predicted)``; the first token of each window has no context and
  is not predicted.
- ``ppl.lm_eval``: lm-eval's ``loglikelihood_rolling`` through ``HFLM`` on a local task
  YAML over the same split (see ``lm_eval_task``). lm-eval scores each document
  separately, predicts its first token from the EOT prefix, and uses disjoint windows of
  ``max_length`` with one token of context; its token perplexity is
  ``exp(-sum loglik / tokens)``. It is higher than ``ppl.window`` because documents and
  their first tokens are scored with less context; see docs/guide/measurement.md.
- fidelity: per-token KL(reference || candidate) and top-1 agreement on validation
  windows; embedding cosine for encoders.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from harness.models import data
from harness.stats import pack_bits


def _text_ids(tokenizer, split_or_text: str) -> torch.Tensor:
    if split_or_text in data.SPLITS:
        return data.split_ids(tokenizer, split_or_text)
    return data.token_ids(tokenizer, split_or_text)


def windows(ids: torch.Tensor, window: int, max_tokens: int | None = None) -> torch.Tensor:
    """Non-overlapping [n, window] windows of a 1-D id stream (partial tail dropped)."""
    if max_tokens is not None:
        ids = ids[:max_tokens]
    n = ids.numel() // window
    if n == 0:
        raise ValueError(f"text has {ids.numel()} tokens, fewer than one window of {window}")
    return ids[: n * window].view(n, window)


def _batches(x: torch.Tensor, batch: int) -> Iterator[torch.Tensor]:
    for i in range(0, x.shape[0], batch):
        yield x[i: i + batch]


def _device_of(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@torch.no_grad()
def nll_sum(model: torch.nn.Module, wins: torch.Tensor, batch: int = 8,
            per_window: list[float] | None = None) -> tuple[float, int]:
    """Sum of next-token NLL (nats) over all windows, and the number of tokens predicted.
    ``per_window`` (a list) receives each window's NLL sum, in window order."""
    dev = _device_of(model)
    total, count = 0.0, 0
    for b in _batches(wins, batch):
        b = b.to(dev)
        logits = model(input_ids=b).logits.float()
        lp = F.log_softmax(logits[:, :-1], dim=-1)
        nll = -lp.gather(-1, b[:, 1:, None]).squeeze(-1)
        total += nll.double().sum().item()
        count += nll.numel()
        if per_window is not None:
            per_window += nll.double().sum(-1).tolist()
    return total, count


def perplexity_window(model: torch.nn.Module, tokenizer, split_or_text: str = "validation", *,
                      window: int = 128, max_tokens: int | None = None, batch: int = 8) -> float:
    """Perplexity under the fixed non-overlapping window protocol."""
    return perplexity_window_samples(model, tokenizer, split_or_text, window=window, max_tokens=max_tokens,
                                     batch=batch)[0]


def perplexity_window_samples(model: torch.nn.Module, tokenizer, split_or_text: str = "validation", *,
                              window: int = 128, max_tokens: int | None = None, batch: int = 8
                              ) -> tuple[float, dict[str, list]]:
    """``perplexity_window`` and its raw samples: each window's NLL sum (nats) with the
    window's index in the split (windows are fixed by split, window and max_tokens, so two
    runs pair window by window); every window predicts ``window - 1`` tokens."""
    wins = windows(_text_ids(tokenizer, split_or_text), window, max_tokens)
    per: list[float] = []
    total, count = nll_sum(model, wins, batch, per)
    return math.exp(total / count), {"window_nll": per, "window_ids": list(range(len(per)))}


def unigram_perplexity(tokenizer, *, train: str = "train", eval_split: str = "validation",
                       window: int = 128, max_tokens: int | None = None) -> float:
    """Add-one smoothed unigram model fit on ``train``, scored on the tokens that
    ``perplexity_window`` predicts (so the two are directly comparable)."""
    counts = torch.bincount(data.split_ids(tokenizer, train), minlength=len(tokenizer)).double() + 1
    logp = torch.log(counts / counts.sum())
    wins = windows(_text_ids(tokenizer, eval_split), window, max_tokens)
    return math.exp(-logp[wins[:, 1:]].mean().item())


@torch.no_grad()
def fidelity(reference: torch.nn.Module, candidate: torch.nn.Module, tokenizer,
             split_or_text: str = "validation", *, window: int = 128, max_tokens: int | None = 4096,
             batch: int = 8) -> dict[str, float]:
    """Mean per-token KL(ref || cand) in nats and top-1 agreement of next-token argmax."""
    return fidelity_samples(reference, candidate, tokenizer, split_or_text, window=window, max_tokens=max_tokens,
                            batch=batch)[0]


@torch.no_grad()
def fidelity_samples(reference: torch.nn.Module, candidate: torch.nn.Module, tokenizer,
                     split_or_text: str = "validation", *, window: int = 128, max_tokens: int | None = 4096,
                     batch: int = 8) -> tuple[dict[str, float], dict[str, dict[str, list]]]:
    """``fidelity`` and its raw samples per window (window ids as in ``ppl.window``): the KL
    sum and the count of tokens whose top-1 agrees, out of ``window`` tokens each, and every
    token's agreement as packed bits (``harness.stats.pack_bits``) for McNemar's test."""
    wins = windows(_text_ids(tokenizer, split_or_text), window, max_tokens)
    kl_sum, agree, n = 0.0, 0, 0
    kl_w: list[float] = []
    agree_w: list[int] = []
    bits: list[bool] = []
    for b in _batches(wins, batch):
        lr = F.log_softmax(reference(input_ids=b.to(_device_of(reference))).logits.float().cpu(), -1)
        lc = F.log_softmax(candidate(input_ids=b.to(_device_of(candidate))).logits.float().cpu(), -1)
        kl = (lr.exp() * (lr - lc)).sum(-1)
        same = lr.argmax(-1) == lc.argmax(-1)
        kl_sum += kl.double().sum().item()
        agree += same.sum().item()
        n += kl.numel()
        kl_w += kl.double().sum(-1).tolist()
        agree_w += same.sum(-1).tolist()
        bits += same.reshape(-1).tolist()
    ids = list(range(len(kl_w)))
    return ({"kl": max(kl_sum / n, 0.0), "top1": agree / n},
            {"kl": {"window_kl": kl_w, "window_ids": ids}, "top1": {"window_agree": agree_w, "window_ids": ids,
                      "agree_bits": pack_bits(bits), "tokens": [len(bits)]}})


@torch.no_grad()
def embeddings(model: torch.nn.Module, tokenizer, texts: list[str], batch: int = 16) -> torch.Tensor:
    """Mean-pooled, L2-normalized sentence embeddings (sentence-transformers' recipe)."""
    out = []
    dev = _device_of(model)
    for i in range(0, len(texts), batch):
        enc = tokenizer(texts[i: i + batch], padding=True, truncation=True, max_length=128,
                        return_tensors="pt").to(dev)
        h = model(**enc).last_hidden_state.float()
        m = enc["attention_mask"].unsqueeze(-1).float()
        out.append(F.normalize((h * m).sum(1) / m.sum(1).clamp(min=1), dim=-1).cpu())
    return torch.cat(out)


def eval_sentences(split: str = "validation", n: int = 64) -> list[str]:
    """Fixed evaluation sentences for encoders: the first ``n`` non-trivial paragraphs."""
    paras = [p.strip().replace("\n", " ") for p in data.load_split(split).split("\n\n")]
    return [p[:400] for p in paras if len(p) > 40][:n]


def embedding_cosine(reference: torch.nn.Module, candidate: torch.nn.Module, tokenizer,
                     texts: list[str] | None = None) -> float:
    """Mean cosine similarity between reference and candidate sentence embeddings."""
    texts = texts or eval_sentences()
    a = embeddings(reference, tokenizer, texts)
    b = embeddings(candidate, tokenizer, texts)
    return (a * b).sum(-1).mean().item()
