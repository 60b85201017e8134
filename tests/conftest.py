"""Shared fixtures: small random models of each supported family, and the embedded model.

Random configs keep unit tests fast; tests that need a *trained* model (orderings the
literature guarantees) use ``tiny_lm`` (harness-tiny, loaded once per session).
"""
from __future__ import annotations

import copy

import pytest
import torch


def _seeded(build):
    torch.manual_seed(0)
    return build().eval()


def random_llama(vocab: int = 128, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                 inter: int = 128):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=256,
                      tie_word_embeddings=False)
    return _seeded(lambda: LlamaForCausalLM(cfg))


def random_opt():
    from transformers import OPTConfig, OPTForCausalLM

    cfg = OPTConfig(vocab_size=128, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                    max_position_embeddings=256, word_embed_proj_dim=64)
    return _seeded(lambda: OPTForCausalLM(cfg))


def random_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=256)
    return _seeded(lambda: GPT2LMHeadModel(cfg))


def random_bert():
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=256)
    return _seeded(lambda: BertModel(cfg))


FAMILIES = {"llama": random_llama, "opt": random_opt, "gpt2": random_gpt2, "bert": random_bert}


@pytest.fixture(params=sorted(FAMILIES))
def family_model(request):
    """(family name, small random model) for each supported architecture family."""
    return request.param, FAMILIES[request.param]()


@pytest.fixture
def llama():
    return random_llama()


@pytest.fixture(scope="session")
def _tiny_session():
    import harness

    return harness.load_model("harness-tiny")


@pytest.fixture
def tiny_lm(_tiny_session):
    """harness-tiny (trained), with a private copy of the model per test."""
    lm = copy.copy(_tiny_session)
    lm.model = copy.deepcopy(_tiny_session.model)
    return lm


@pytest.fixture(scope="session")
def tiny_calibration(_tiny_session):
    import harness

    return harness.get_calibration(_tiny_session.tokenizer, n=16, seq_len=128, seed=0)


def ids(batch: int = 2, seq: int = 16, vocab: int = 128) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, vocab, (batch, seq), generator=g)


@pytest.fixture
def one_thread():
    """Small matrices: one torch thread is several times faster than two on a loaded machine.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
