"""RTN technique: every family, packed storage, save -> load identity, bad specs."""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import ids

import harness
from harness.config import SpecError
from harness.layers.quant import QuantLinear
from harness.measure.size import measure_size

pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: one torch thread is faster


def _logits(model, x):
    with torch.no_grad():
        out = model(x)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("spec", ["rtn:bits=8", "rtn:bits=4,group=32,sym=false", "rtn:bits=3,group=16"])
def test_all_families_quantize_save_load(family_model, spec, tmp_path):
    fam, model = family_model
    x = ids()
    ref = _logits(model, x)
    res = harness.compress(copy.deepcopy(model), spec, kind="encoder" if fam == "bert" else "causal-lm")
    assert res.storage == "packed"
    qs = [m for m in res.model.modules() if isinstance(m, QuantLinear)]
    assert len(qs) >= 4 * 2  # at least the attention/MLP linears of both blocks
    out = _logits(res.model, x)
    rel = (out - ref).norm() / ref.norm()
    assert rel < {8: 0.02, 4: 0.3, 3: 0.6}[res.config.bits]
    harness.save_compressed(res.model, tmp_path / fam)
    assert torch.equal(_logits(harness.load_compressed(tmp_path / fam), x), out)


def test_int4_g128_storage_shrinks():
    from conftest import random_llama

    model = random_llama(hidden=128, inter=256)
    bytes0 = {r.metric: r.value for r in measure_size(model)}["size.bytes"]
    res = harness.compress(model, "rtn:bits=4,group=128")
    recs = {r.metric: r.value for r in measure_size(res.model)}
    # every quantized layer stores exactly 4 bits per weight + one float16 scale per 128
    qs = [m for m in res.model.modules() if isinstance(m, QuantLinear)]
    for m in qs:
        bits = sum(t.numel() * t.element_size() * 8 for n, t in m.state_dict().items() if n != "bias")
        assert bits / m.logical_params() == pytest.approx(4 + 16 / 128)
    assert recs["size.bits_per_param"] <= 4.3  # measure.size over the whole model
    assert recs["size.bytes"] < bytes0


def test_bad_specs():
    from conftest import random_llama

    with pytest.raises(SpecError, match="bits=5"):
        harness.make("rtn:bits=5")
    with pytest.raises(SpecError, match="group=0 must be a positive integer") as e:
        harness.compress(random_llama(), "rtn:bits=4,group=0")
    assert "\n" not in str(e.value)
