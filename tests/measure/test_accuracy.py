import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from harness.measure import accuracy


class CharTok:
    """Maps characters to ids mod V (enough for protocol arithmetic)."""

    def __init__(self, vocab: int = 8):
        self.vocab = vocab

    def __call__(self, text, add_special_tokens=False, return_attention_mask=False):
        return {"input_ids": [ord(c) % self.vocab for c in text]}

    def __len__(self):
        return self.vocab


class Successor(nn.Module):
    """Predicts (x+1) % V with probability p, the rest uniformly."""

    def __init__(self, vocab: int, p: float):
        super().__init__()
        self.vocab, self.p = vocab, p
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids):
        probs = torch.full((*input_ids.shape, self.vocab), (1 - self.p) / (self.vocab - 1))
        probs.scatter_(-1, ((input_ids + 1) % self.vocab)[..., None], self.p)
        return SimpleNamespace(logits=probs.log())


def test_window_perplexity_matches_hand_computation():
    V, p, window = 8, 0.7, 4
    text = "".join(chr(c) for c in [0, 1, 2, 5, 6, 7, 0, 3, 1, 2])  # 10 tokens -> 2 windows of 4
    ids = [ord(c) % V for c in text][:8]
    nll = []
    for w in (ids[:4], ids[4:8]):
        for prev, nxt in zip(w[:-1], w[1:]):
            nll.append(-math.log(p if nxt == (prev + 1) % V else (1 - p) / (V - 1)))
    expected = math.exp(sum(nll) / len(nll))
    got = accuracy.perplexity_window(Successor(V, p), CharTok(V), text, window=window)
    assert got == pytest.approx(expected, rel=1e-6)  # float32 log-softmax


def test_uniform_model_has_perplexity_equal_to_vocab():
    V = 8
    assert accuracy.perplexity_window(Successor(V, 1 / V), CharTok(V), "abcdefghij" * 5, window=5) == pytest.approx(V)


def test_kl_of_model_with_itself_is_zero_and_top1_is_one(llama):
    tok = CharTok(128)
    text = "".join(chr(i % 120 + 1) for i in range(600))
    f = accuracy.fidelity(llama, llama, tok, text, window=32)
    assert f["kl"] == pytest.approx(0.0, abs=1e-7) and f["top1"] == 1.0


def test_kl_grows_with_perturbation(llama):
    import copy

    tok = CharTok(128)
    text = "".join(chr(i % 120 + 1) for i in range(600))
    small, big = copy.deepcopy(llama), copy.deepcopy(llama)
    with torch.no_grad():
        for m, s in ((small, 0.01), (big, 0.2)):
            for prm in m.parameters():
                prm.add_(torch.randn_like(prm) * s)
    assert 0 < accuracy.fidelity(llama, small, tok, text, window=32)["kl"] < \
        accuracy.fidelity(llama, big, tok, text, window=32)["kl"]


def test_empty_text_and_too_short_text_are_errors():
    with pytest.raises(ValueError, match="evaluation text is empty"):
        accuracy.perplexity_window(Successor(8, .5), CharTok(8), "   ", window=4)
    with pytest.raises(ValueError, match="fewer than one window"):
        accuracy.perplexity_window(Successor(8, .5), CharTok(8), "abc", window=4)
