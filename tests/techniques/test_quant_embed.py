"""quant-embed: the token embedding as packed codes, reloaded; a tied head is untied and
keeps its full-precision tensor (counted), with a note saying so."""
from __future__ import annotations

import copy

import torch
from conftest import ids, random_gpt2, random_llama

from harness.checkpoint import load_compressed, save_compressed
from harness.layers.embedding import QuantEmbedding
from harness.techniques import compress


def _logits(model, x):
    with torch.no_grad():
        return model(input_ids=x).logits


def test_quant_embed_packs_the_table_and_reloads(tmp_path):
    model = random_llama()
    x = ids()
    res = compress(copy.deepcopy(model), "rtn:bits=4,group=32 + quant-embed:bits=4,group=32")
    emb = res.model.get_input_embeddings()
    assert isinstance(emb, QuantEmbedding)
    assert emb.qweight.numel() == 128 * 64 // 2 and emb.scales.shape == (128, 2)
    w = model.get_input_embeddings().weight
    assert (emb.weight - w).abs().max() <= emb.scales.float().max() + 1e-6  # RTN: within one step
    save_compressed(res.model, tmp_path / "e")
    assert torch.equal(_logits(load_compressed(tmp_path / "e"), x), _logits(res.model, x))


def test_a_tied_head_is_untied_and_kept(tmp_path):
    model = random_gpt2()  # lm_head tied to wte
    head = model.lm_head.weight
    res = compress(copy.deepcopy(model), "quant-embed:bits=8,group=32")
    assert isinstance(res.model.transformer.wte, QuantEmbedding)
    assert res.model.config.tie_word_embeddings is False and any("untied" in n for n in res.notes)
    assert torch.equal(res.model.lm_head.weight, head)  # the head keeps the full-precision table
    save_compressed(res.model, tmp_path / "g")
    x = ids()
    assert torch.equal(_logits(load_compressed(tmp_path / "g"), x), _logits(res.model, x))
