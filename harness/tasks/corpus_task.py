"""lm-eval hooks for the embedded-corpus perplexity tasks (referenced by the YAMLs here)."""
from __future__ import annotations

import re

DOC_CHARS = 1000  # paragraphs are merged into documents of at least this many characters


def documents(split: str) -> list[str]:
    """Deterministic documents: consecutive paragraphs merged to >= DOC_CHARS chars."""
    from harness.models.data import load_split

    docs, cur = [], []
    for para in load_split(split).split("\n\n"):
        if not para.strip():
            continue
        cur.append(para)
        if sum(len(p) for p in cur) >= DOC_CHARS:
            docs.append("\n\n".join(cur))
            cur = []
    if cur:
        docs.append("\n\n".join(cur))
    return docs


def _dataset(split: str, **_: object):
    import datasets

    return datasets.DatasetDict({split: datasets.Dataset.from_dict({"page": documents(split)})})


def load_validation(**kw: object):
    return _dataset("validation", **kw)


def load_test(**kw: object):
    return _dataset("test", **kw)


def process_results(doc: dict, results: list) -> dict:
    (loglikelihood,) = results
    words = len(re.split(r"\s+", doc["page"]))
    nbytes = len(doc["page"].encode("utf-8"))
    return {"word_perplexity": (loglikelihood, words), "byte_perplexity": (loglikelihood, nbytes),
            "bits_per_byte": (loglikelihood, nbytes)}
