"""dynamic-int8 (save/load, close to fp32), KV-cache quantization (memory, fidelity),
GPU-only techniques refuse CPU with a reason."""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import ids, random_llama

import harness
from harness.layers.dynamic import DynamicInt8Linear
from harness.measure.memory import cache_nbytes
from harness.techniques.base import DeviceUnsupportedError
from harness.techniques.quantization.kv_cache import QuantizedKVCache

pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: one torch thread is faster


def _logits(m, x):
    with torch.no_grad():
        o = m(x)
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


def test_dynamic_int8_all_families_save_load(family_model, tmp_path):
    fam, model = family_model
    x = ids()
    ref = _logits(model, x)
    res = harness.compress(copy.deepcopy(model), "dynamic-int8", kind="encoder" if fam == "bert" else "causal-lm")
    n = sum(isinstance(m, DynamicInt8Linear) for m in res.model.modules())
    assert n >= 8
    out = _logits(res.model, x)
    assert (out - ref).norm() / ref.norm() < 0.05
    harness.save_compressed(res.model, tmp_path / fam)
    assert torch.equal(_logits(harness.load_compressed(tmp_path / fam), x), out)


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
