"""compressed-tensors both ways: the package's own decompression (through transformers, as
a user loads a checkpoint) gives our export the same dense weights as our dequantizer, and
our import of a checkpoint the package compressed itself holds the same weights."""
from __future__ import annotations

import pytest
import torch
from conftest import random_llama

CT = "pip install compressed-tensors  (or the extra: pip install 'llm-compression-harness[formats]')"
pytest.importorskip("compressed_tensors", reason=CT)

import harness  # noqa: E402
from harness.formats import FormatError  # noqa: E402
from harness.formats.ctensors_read import load_ctensors  # noqa: E402
from harness.layers.base import set_module  # noqa: E402
from harness.layers.exec import reference_forward  # noqa: E402
from harness.layers.quant import QuantLinear, W8A8Linear  # noqa: E402

IDS = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(3))


def _decompressed(path):
    """compressed-tensors' ModelCompressor decompressing the checkpoint inside transformers."""
    from transformers import AutoModelForCausalLM
    from transformers.utils.quantization_config import CompressedTensorsConfig

    return AutoModelForCausalLM.from_pretrained(str(path), quantization_config=CompressedTensorsConfig(
        dequantize=True)).eval()


def _linears(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, (QuantLinear, W8A8Linear))}


def _w8a8_weight(m: W8A8Linear, dtype) -> torch.Tensor:
    return (m.qweight.float() * m.w_scales.float()[:, None]).to(dtype)


@pytest.mark.parametrize("spec", ["rtn:bits=4,group=32", "rtn:bits=4,group=32,sym=false", "rtn:bits=4,group=128",
                                  "rtn:bits=8,group=None", "rtn:bits=8,group=None,sym=false",
                                  "rtn:bits=4,group=None,sym=false", "rtn:bits=3,group=32"])
def test_package_decompresses_our_export_to_our_weights(tmp_path, spec):
    model = harness.compress(random_llama(), spec).model
    out = harness.export(model, "compressed-tensors", tmp_path / "ct")
    assert out["types"] == {"pack-quantized": 14}
    ref = _decompressed(tmp_path / "ct")
    for name, q in _linears(model).items():
        w = ref.get_submodule(name).weight
        # compressed-tensors computes (q - zp) * s in the scale's dtype (float16, as stored)
        assert torch.equal(w, q.dequantize(torch.float16).to(w.dtype)), name
    back = load_ctensors(tmp_path / "ct")  # and we read our own export back, codes for codes
    for name, q in _linears(model).items():
        b = back.model.get_submodule(name)
        assert torch.equal(b.qweight, q.qweight) and torch.equal(b.scales, q.scales), name
        assert (b.zeros is None) == (q.zeros is None) and (q.zeros is None or torch.equal(b.zeros, q.zeros))
    with torch.no_grad(), reference_forward():
        assert torch.equal(back.model(IDS).logits, model(IDS).logits)


def test_w8a8_exports_as_int_quantized(tmp_path):
    model = random_llama()
    for name, mod in [(n, m) for n, m in model.named_modules() if n.endswith(("q_proj", "down_proj"))]:
        set_module(model, name, W8A8Linear.from_weight(mod.weight))
    harness.export(model, "compressed-tensors", tmp_path / "w8")
    import json

    q = json.loads((tmp_path / "w8" / "config.json").read_text())["quantization_config"]
    assert q["format"] == "int-quantized" and q["config_groups"]["group_0"]["input_activations"]["dynamic"]
    ref = _decompressed(tmp_path / "w8")
    for name, m in _linears(model).items():
        w = ref.get_submodule(name).weight
        assert torch.equal(w, _w8a8_weight(m, torch.float16).to(w.dtype)), name
    back = load_ctensors(tmp_path / "w8")
    layer = back.model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, W8A8Linear) and torch.equal(layer.qweight, model.model.layers[0].self_attn.q_proj.qweight)


def _made_by_the_package(path, dtype, *, bits=4, group=32, sym=False, strategy="group"):
    """A checkpoint compressed-tensors writes on its own (llm-compressor's save path without
    calibration: min/max qparams from the package's calculate_qparams)."""
    from compressed_tensors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
        apply_quantization_config,
    )
    from compressed_tensors.quantization.utils import calculate_qparams

    model = random_llama().to(dtype)
    args = QuantizationArgs(num_bits=bits, type="int", symmetric=sym, strategy=strategy,
                            group_size=group if strategy == "group" else None)
    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": QuantizationScheme(
        targets=["Linear"], weights=args)}, ignore=["lm_head"]))
    for mod in model.modules():
        if hasattr(mod, "weight_scale"):
            w = mod.weight.detach()
            g = w.reshape(w.shape[0], -1, group) if strategy == "group" else w.reshape(w.shape[0], 1, -1)
            s, z = calculate_qparams(g.amin(-1), g.amax(-1), args)
            mod.weight_scale.data = s.to(mod.weight_scale.dtype)
            if hasattr(mod, "weight_zero_point"):
                mod.weight_zero_point.data = z.to(mod.weight_zero_point.dtype)
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format="pack-quantized")
    compressor.compress_model(model)
    model.save_pretrained(str(path))
    compressor.update_config(str(path))
    return path


@pytest.mark.parametrize("dtype,bits,sym,strategy", [
    (torch.float16, 4, False, "group"), (torch.float16, 4, True, "group"), (torch.bfloat16, 4, False, "group"),
    (torch.float16, 8, True, "channel"), (torch.float16, 8, False, "channel")])
def test_we_import_what_the_package_compressed(tmp_path, dtype, bits, sym, strategy):
    path = _made_by_the_package(tmp_path / "made", dtype, bits=bits, sym=sym, strategy=strategy)
    lm = load_ctensors(path)
    ref = _decompressed(path)
    layers = _linears(lm.model)
    assert len(layers) == 14 and all(q.bits == bits and q.sym == sym for q in layers.values())
    for name, q in layers.items():
        w = ref.get_submodule(name).weight
        assert torch.equal(w, q.dequantize(dtype).to(w.dtype)), name


def test_refusals_are_one_line(tmp_path):
    path = _made_by_the_package(tmp_path / "fp32", torch.float32)
    with pytest.raises(FormatError, match="not all float16 values") as e:
        load_ctensors(path)
    assert "\n" not in str(e.value)
    for spec, match in [("magnitude:sparsity=0.5", "sparse_linear has no compressed-tensors format"),
                        ("nf4:group=64", "codebook_linear"), ("none", "no quantized linear layer")]:
        with pytest.raises(FormatError, match=match) as e:
            harness.export(harness.compress(random_llama(), spec).model, "compressed-tensors", tmp_path / "x")
        assert "\n" not in str(e.value) and not (tmp_path / "x").exists()
    model = random_llama()
    q = model.model.layers[0].self_attn.q_proj
    set_module(model, "model.layers.0.self_attn.q_proj",
               QuantLinear.from_weight(q.weight, bits=4, group=32, input_scale=torch.ones(64)))
    with pytest.raises(FormatError, match="AWQ input scales"):
        harness.export(model, "compressed-tensors", tmp_path / "a")


def test_load_model_takes_a_compressed_tensors_directory(tmp_path, tiny_lm):
    model = harness.compress(tiny_lm.model, "rtn:bits=4,group=64").model
    harness.export(model, "compressed-tensors", tmp_path / "ct", tokenizer=tiny_lm.tokenizer)
    lm = harness.load_model(str(tmp_path / "ct"))
    assert lm.info["format"] == "compressed-tensors" and isinstance(lm.model.model.layers[0].mlp.up_proj, QuantLinear)
    ids = tiny_lm.tokenizer("import os", return_tensors="pt").input_ids
    with torch.no_grad(), reference_forward():
        assert torch.equal(lm.model(ids).logits, model(ids).logits)
