"""``harness_cloze``: a bundled, offline multiple-choice task (lm-eval ``multiple_choice``).

Last-word cloze over the bundled test split: every sentence that ends in a word of three or
more letters becomes one item; the context is its paragraph up to that word, the choices are
the word and three distractors drawn from the other sentence-final words of the same split.
Everything is derived deterministically from the committed text (the draw is seeded by the
item's index), so two machines score the same items. Chance is 25%.
"""
from __future__ import annotations

import random
import re

N_CHOICES = 4
MAX_CONTEXT_CHARS = 256  # a paragraph's tail is enough context; longer items cost minutes on a 135M model
_END = re.compile(r"(?:^|\s)([A-Za-z]{3,})\.$")


def items(split: str = "test") -> list[dict]:
    """The task's documents: ``{"context", "choices", "label"}`` dicts, in text order."""
    from harness.models.data import load_split

    raw: list[tuple[str, str]] = []
    for para in load_split(split).split("\n\n"):
        para = " ".join(para.split())
        pos = 0
        for sent in re.split(r"(?<=[.!?])\s+", para):
            start = para.index(sent, pos)
            pos = start + len(sent)
            m = _END.search(sent)
            if m is None or len(sent.split()) < 6:
                continue
            ctx = para[:start + m.start(1)].rstrip()
            raw.append((ctx[-MAX_CONTEXT_CHARS:], m.group(1)))
    pool = sorted({w for _, w in raw})
    out = []
    for i, (ctx, word) in enumerate(raw):
        rng = random.Random(i)
        distractors = rng.sample([w for w in pool if w.lower() != word.lower()], N_CHOICES - 1)
        label = rng.randrange(N_CHOICES)
        choices = distractors[:label] + [word] + distractors[label:]
        out.append({"context": ctx, "choices": [f" {c}" for c in choices], "label": label})
    return out


def load_test(**_: object):
    import datasets

    docs = items("test")
    return datasets.DatasetDict({"test": datasets.Dataset.from_dict(
        {k: [d[k] for d in docs] for k in ("context", "choices", "label")})})
