"""dynamic-int8 (per-token W8A8 by default, per-tensor by name: save/load, close to fp32,
an outlier token, int8 storage counted), KV-cache quantization (memory, fidelity),
GPU-only techniques refuse CPU with a reason."""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import ids, random_llama

import harness
from harness.calibration import target_linears
from harness.layers.dynamic import DynamicInt8Linear
from harness.layers.exec import kernel_info
from harness.layers.quant import W8A8Linear
from harness.measure.memory import cache_nbytes
from harness.techniques.base import DeviceUnsupportedError
from harness.techniques.quantization.dynamic import quantize_linear
from harness.techniques.quantization.kv_cache import QuantizedKVCache

pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: one torch thread is faster


def _logits(m, x):
    with torch.no_grad():
        o = m(x)
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


@pytest.mark.parametrize("spec,layer", [("dynamic-int8", W8A8Linear),  # the default: per-token W8A8
                                        ("dynamic-int8:act=per-tensor", DynamicInt8Linear)])
def test_dynamic_int8_all_families_save_load(family_model, spec, layer, tmp_path):
    fam, model = family_model
    x = ids()
    ref = _logits(model, x)
    res = harness.compress(copy.deepcopy(model), spec, kind="encoder" if fam == "bert" else "causal-lm")
    n = sum(isinstance(m, layer) for m in res.model.modules())
    assert n >= 8
    out = _logits(res.model, x)
    assert (out - ref).norm() / ref.norm() < 0.05
    harness.save_compressed(res.model, tmp_path / fam)
    assert torch.equal(_logits(harness.load_compressed(tmp_path / fam), x), out)


def _outlier_tokens(n_tok=16, d=256, outlier=3000.0):
    """Activations like SmolLM2's down_proj inputs: every token's largest value about 3,
    except token 5, which holds one channel at ``outlier`` (measured there: 3064 against a
    median token's 1.4)."""
    x = torch.randn(n_tok, d, generator=torch.Generator().manual_seed(0))
    x[5, 17] = outlier
    return x


@pytest.mark.parametrize("kernel", [True, False], ids=["int8pack", "reference"])
def test_per_token_w8a8_bounds_every_token_next_to_an_outlier_token(kernel):
    """The per-token scale keeps every token's error at int8 resolution; one per-tensor scale
    sized by the outlier token rounds every other token's activations to about nothing."""
    lin = torch.nn.Linear(256, 128)
    x = _outlier_tokens()
    with torch.no_grad():
        ref = lin(x).double()
        per = {act: quantize_linear(lin, act)
               for act in ("per-token", "per-tensor")}
        per["per-token"].use_kernel = kernel
        if kernel and kernel_info(per["per-token"])["kernel"] != "int8pack-bf16 (int8 activations)":
            pytest.skip(f"no int8pack kernel here: {kernel_info(per['per-token'])['why_not']}")
        err = {act: ((m(x).double() - ref).norm(dim=1) / ref.norm(dim=1)) for act, m in per.items()}
    others = torch.arange(16) != 5
    # int8 resolution: activation step absmax/127 and weight step rowmax/127 (each ~0.6% of a
    # token's output here), plus bf16 rounding of the kernel's output (2**-9)
    assert err["per-token"].max() < 0.02, err["per-token"]
    assert err["per-tensor"][others].min() > 0.5, err["per-tensor"]  # the other tokens are lost
    assert err["per-tensor"][5] < 0.05  # only the outlier token itself keeps its resolution


@pytest.mark.parametrize("spec,scale_bits", [("dynamic-int8", 16), ("dynamic-int8:act=per-tensor", 32)])
def test_dynamic_int8_storage_is_int8_and_counted(spec, scale_bits):
    """Every linear (head included) stores int8 codes: the counted bits are 8 per weight plus
    one scale per output channel, nothing dense on the side."""
    from harness.measure.size import serialized_bytes, weight_storage

    model = random_llama()
    dense_bytes = serialized_bytes(model)
    shapes = [tuple(m.weight.shape) for m in target_linears(model, scope="all", head=True).values()]
    q = harness.compress(model, spec).model
    layers = [m for m in q.modules() if isinstance(m, (W8A8Linear, DynamicInt8Linear))]
    assert len(layers) == len(shapes) and all(m.qweight.dtype == torch.int8 for m in layers)
    bits, logical = weight_storage(q)
    assert logical == sum(o * i for o, i in shapes)
    assert bits == sum(o * i * 8 + o * scale_bits for o, i in shapes)
    assert serialized_bytes(q) < 0.45 * dense_bytes  # embeddings stay fp32


def test_dynamic_int8_default_is_per_token_and_per_tensor_says_it_depends_on_the_batch():
    from harness.techniques.base import TECHNIQUES

    assert harness.make("dynamic-int8").config.act == "per-token"
    assert harness.make("dynamic-int8").batch_dependence is None
    assert "batch" in harness.make("dynamic-int8:act=per-tensor").batch_dependence
    assert harness.make("dynamic-int8:act=per-tensor").canonical() == "dynamic-int8:act=per-tensor"
    assert TECHNIQUES.get("dynamic-int8").config_version == 2  # the default changed: old baselines never match
    from harness.config import SpecError

    with pytest.raises(SpecError, match="per-token"):
        harness.make("dynamic-int8:act=per-row")


@pytest.mark.parametrize("bits,max_ratio", [(8, 0.3), (4, 0.2)])
def test_kv_cache_memory_and_fidelity(bits, max_ratio):
    from transformers import DynamicCache

    model = random_llama(hidden=128, heads=4, kv_heads=2)
    x = ids(2, 40)

    def run(cache):
        with torch.no_grad():
            out = model(input_ids=x[:, :8], past_key_values=cache, use_cache=True)
            logits = []
            for t in range(8, 40):
                out = model(input_ids=x[:, t:t + 1], past_key_values=out.past_key_values, use_cache=True)
                logits.append(out.logits[:, -1])
        return torch.stack(logits, 1), out.past_key_values

    ref, c0 = run(DynamicCache(config=model.config))
    q, c1 = run(QuantizedKVCache(model.config, bits))
    assert c1.get_seq_length() == 40
    assert cache_nbytes(c1) <= max_ratio * cache_nbytes(c0)  # fp32 cache: 4 bytes/value
    assert (q - ref).norm() / ref.norm() < (0.01 if bits == 8 else 0.1)
    assert not torch.equal(q, ref)  # the cache really was quantized


def test_kv_cache_technique_hooks_generation():
    model = random_llama()
    res = harness.compress(model, "kv-cache:bits=4")
    with torch.no_grad():
        out = res.model(input_ids=ids(1, 8), use_cache=True)
    assert isinstance(out.past_key_values, QuantizedKVCache)
    assert isinstance(res.cache_factory(), QuantizedKVCache)


@pytest.mark.parametrize("spec", ["bnb-int8", "bnb-nf4", "fp8"])
def test_gpu_only_on_cpu(spec):
    tech = harness.make(spec)
    assert "CUDA" in tech.unsupported_reason("cpu")
    with pytest.raises(DeviceUnsupportedError, match="CUDA"):
        harness.compress(random_llama(), spec)


def test_kv_cache_bad_bits():
    from harness.config import SpecError

    with pytest.raises(SpecError, match="bits=3"):
        harness.make("kv-cache:bits=3")
