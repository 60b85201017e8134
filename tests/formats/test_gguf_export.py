"""Export to GGUF writes the harness's own codes: read back by gguf's reader and reference
dequantizer (and un-permuted) every weight is bit-identical to the layer's dequantize();
what GGUF cannot hold exactly is refused in one line."""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import random_gpt2, random_llama
from gguf_files import INSTALL, dense_reference, write

gguf = pytest.importorskip("gguf", reason=INSTALL)

import harness  # noqa: E402
from harness.formats import FormatError  # noqa: E402
from harness.formats.gguf_read import load_gguf  # noqa: E402
from harness.layers.exec import reference_forward  # noqa: E402

IDS = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(2))


def _unpermute(name: str, w: torch.Tensor, cfg) -> torch.Tensor:
    """Invert convert_hf_to_gguf's permute (written here independently of harness.formats)."""
    heads = cfg.num_attention_heads if ".attn_q." in name else cfg.num_key_value_heads if ".attn_k." in name else 0
    if not heads:
        return w
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf(name: str) -> str:
    from gguf_files import BLOCK

    top = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
    if name in top:
        return top[name]
    _, i, g, leaf = name.split(".")
    return f"model.layers.{i}.{BLOCK[g]}.{leaf}"


def _weights_in_file(path, cfg) -> dict[str, tuple[str, torch.Tensor]]:
    out = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        w = torch.from_numpy(gguf.dequantize(t.data, t.tensor_type).copy()).reshape(*reversed(t.shape.tolist()))
        out[_hf(t.name)] = (t.tensor_type.name, _unpermute(t.name, w, cfg))
    return out


def _model_weight(model, hf: str) -> torch.Tensor:
    mod = model.get_submodule(hf.rpartition(".")[0])
    if hf.endswith(".weight") and hasattr(mod, "dequantize"):
        return mod.dequantize()
    return model.state_dict()[hf].float()


@pytest.mark.parametrize("spec,options,types", [
    ("rtn:bits=4,group=32", {}, {"Q4_0"}),
    ("rtn:bits=8,group=32", {}, {"Q8_0"}),
    ("rtn:bits=4,group=128", {}, {"Q4_0"}),           # one g128 scale repeated over four blocks
    ("rtn:bits=4,group=None", {}, {"Q4_0"}),          # per channel
    ("rtn:bits=3,group=32", {}, {"Q4_0"}),            # 3-bit codes in 4-bit blocks
    ("rtn:bits=4,group=32,sym=false", {"asym": "q8_0"}, {"Q8_0"}),
    ("rtn:bits=4,group=32 + quant-embed:bits=8,group=32", {}, {"Q4_0", "Q8_0"}),
])
def test_round_trip_through_gguf_reader_is_bit_identical(tmp_path, spec, options, types):
    model = harness.compress(random_llama(), spec).model
    out = harness.export(model, "gguf", tmp_path / "m.gguf", **options)
    back = _weights_in_file(tmp_path / "m.gguf", model.config)
    assert {q for n, (q, _) in back.items() if n.endswith("proj.weight")} == types - (
        {"Q8_0"} if "quant-embed" in spec else set())
    for hf, (qtype, w) in back.items():
        assert torch.equal(w, _model_weight(model, hf)), (hf, qtype)
    assert out["bytes"] == (tmp_path / "m.gguf").stat().st_size and out["types"]


def test_gptq_int4_g32_exports_as_q4_0_bit_identical(tmp_path, tiny_lm):
    calib = harness.get_calibration(tiny_lm.tokenizer, n=4)
    model = harness.compress(tiny_lm.model, "gptq:bits=4,group=32", calibration=calib).model
    harness.export(model, "gguf", tmp_path / "g.gguf", tokenizer=tiny_lm.tokenizer)
    back = _weights_in_file(tmp_path / "g.gguf", model.config)
    assert back["model.layers.0.self_attn.q_proj.weight"][0] == "Q4_0"
    for hf, (_, w) in back.items():
        assert torch.equal(w, _model_weight(model, hf)), hf
    lm = harness.load_model(str(tmp_path / "g.gguf"))  # and the harness reads its own file back
    ids = tiny_lm.tokenizer("def f(x):\n    return x", return_tensors="pt").input_ids
    with torch.no_grad(), reference_forward():
        assert torch.allclose(lm.model(ids).logits, model(ids).logits, atol=1e-5)


def test_a_gguf_file_comes_back_byte_for_byte(tmp_path):
    """GGUF -> harness -> GGUF: Q4_1 (the float minimum), Q4_0, Q8_0 and K-quant tensors."""
    src = write(random_llama(hidden=256, inter=512), tmp_path / "src.gguf",
                {"attn_q": "Q4_1", "attn_k": "Q4_0", "ffn_down": "Q6_K", "*": "Q8_0"})
    lm = load_gguf(src, tokenizer="unused")
    harness.export(lm.model, "gguf", tmp_path / "out.gguf")
    a = {t.name: (t.tensor_type, bytes(t.data)) for t in gguf.GGUFReader(str(src)).tensors}
    b = {t.name: (t.tensor_type, bytes(t.data)) for t in gguf.GGUFReader(str(tmp_path / "out.gguf")).tensors}
    assert a == b


def test_transformers_reads_the_export_with_the_same_logits(tmp_path):
    for spec in ("none", "rtn:bits=4,group=32"):
        model = harness.compress(random_llama(), spec).model
        harness.export(model, "gguf", tmp_path / f"{spec[:3]}.gguf")
        ref = dense_reference(tmp_path / f"{spec[:3]}.gguf")  # names, q/k order, hyperparameters as llama.cpp's
        with torch.no_grad(), reference_forward():
            assert torch.allclose(ref(IDS).logits, model(IDS).logits, atol=1e-5), spec


def test_tied_embedding_is_written_once(tmp_path):
    model = random_llama()
    model.config.tie_word_embeddings = True
    model.tie_weights()
    harness.export(model, "gguf", tmp_path / "t.gguf")
    names = {t.name for t in gguf.GGUFReader(str(tmp_path / "t.gguf")).tensors}
    assert "token_embd.weight" in names and "output.weight" not in names


def test_tokenizer_is_written_for_llama_cpp_and_read_back(tmp_path, tiny_lm):
    out = harness.export(tiny_lm, "gguf", tmp_path / "tiny.gguf")
    assert any("tokenizer: gpt2" in n for n in out["notes"])
    fields = gguf.GGUFReader(str(tmp_path / "tiny.gguf")).fields
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert len(fields["tokenizer.ggml.tokens"].contents()) == tiny_lm.model.config.vocab_size
    lm = harness.load_model(str(tmp_path / "tiny.gguf"))
    text = "for i in range(3):\n    print(i)  # ünïcode"
    assert lm.tokenizer(text).input_ids == tiny_lm.tokenizer(text).input_ids
    with torch.no_grad():
        ids = tiny_lm.tokenizer(text, return_tensors="pt").input_ids
        assert torch.allclose(lm.model(ids).logits, tiny_lm.model(ids).logits, atol=1e-5)


@pytest.mark.parametrize("spec,match", [
    ("rtn:bits=4,group=32,sym=false", "asym=q8_0"),
    ("nf4:group=64", "codebook_linear has no GGUF type"),
    ("magnitude:sparsity=0.5", "sparse_linear has no GGUF type"),
    ("rtn:bits=4,group=48", "does not fall on GGUF's 32-value blocks"),
    ("svd:reduction=0.5", "lowrank_linear has no GGUF type"),
])
def test_what_gguf_cannot_hold_is_refused_in_one_line(tmp_path, spec, match):
    model = harness.compress(random_llama(), spec).model
    with pytest.raises(FormatError, match=match) as e:
        harness.export(model, "gguf", tmp_path / "x.gguf")
    assert "\n" not in str(e.value) and "GGUF holds" in str(e.value) or "asym=" in str(e.value)
    assert not (tmp_path / "x.gguf").exists() and not list(tmp_path.iterdir())  # nothing half-written


def test_awq_input_scales_and_other_families_are_refused(tmp_path):
    from harness.layers.base import set_module
    from harness.layers.quant import QuantLinear

    model = random_llama()
    q = model.model.layers[0].self_attn.q_proj
    set_module(model, "model.layers.0.self_attn.q_proj",
               QuantLinear.from_weight(q.weight, bits=4, group=32, input_scale=torch.ones(64)))
    with pytest.raises(FormatError, match="AWQ input scales"):
        harness.export(model, "gguf", tmp_path / "a.gguf")
    with pytest.raises(FormatError, match="Llama-family") as e:
        harness.export(random_gpt2(), "gguf", tmp_path / "g.gguf")
    assert "\n" not in str(e.value)
    with pytest.raises(FormatError, match="choose one of"):
        harness.export(random_llama(), "onnx", tmp_path / "o")


def test_asym_round_states_the_rounding(tmp_path):
    model = harness.compress(random_llama(), "rtn:bits=4,group=32,sym=false").model
    out = harness.export(copy.deepcopy(model), "gguf", tmp_path / "r.gguf", asym="round")
    note = next(n for n in out["notes"] if "minimum rounded to fp16" in n)
    bound = float(note.rsplit("max |dw| ", 1)[1].rstrip(")"))
    back = _weights_in_file(tmp_path / "r.gguf", model.config)
    worst = max((w - _model_weight(model, hf)).abs().max().item() for hf, (_, w) in back.items())
    assert 0 < worst <= bound * 1.001


def test_cli_eval_export(tmp_path, capsys):
    from harness.cli import main

    out = tmp_path / "cli.gguf"
    assert main(["eval", "harness-tiny", "-t", "rtn:bits=4,group=32", "--metrics", "size.bytes",
                 "--export", f"gguf:{out}"]) == 0
    assert out.is_file() and "exported gguf" in capsys.readouterr().err
    assert main(["eval", "harness-tiny", "--export", "gguf,asym=maybe:x.gguf"]) == 2
    assert "asym='maybe'" in capsys.readouterr().err
