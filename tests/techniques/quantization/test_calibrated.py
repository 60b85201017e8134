"""GPTQ, AWQ, SmoothQuant on every family (random configs): real forward, save -> load
identity, calibration record; AWQ and SmoothQuant beat their baselines on outlier inputs."""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import ids

import harness
from harness.calibration import Calibration
from harness.layers.quant import QuantLinear, W8A8Linear
from harness.primitives.quant import rtn_fake_quant
from harness.primitives.scales import search_scale, smooth_scales
from harness.techniques.base import CalibrationRequiredError

pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: one torch thread is faster


def _calib(vocab=128, n=4, seq=32):
    x = torch.randint(0, vocab, (n, seq), generator=torch.Generator().manual_seed(3))
    return Calibration(x, torch.ones_like(x), seed=3)


def _out(model, x):
    with torch.no_grad():
        o = model(x)
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


@pytest.mark.parametrize("spec,layer", [("gptq:bits=4,group=32", QuantLinear),
                                        ("awq:bits=4,group=32,grid=4,samples=64", QuantLinear),
                                        ("smoothquant:alpha=0.5", W8A8Linear)])
def test_families_save_load(family_model, spec, layer, tmp_path):
    fam, model = family_model
    x = ids()
    ref = _out(model, x)
    res = harness.compress(copy.deepcopy(model), spec, calibration=_calib(),
                           kind="encoder" if fam == "bert" else "causal-lm")
    assert sum(isinstance(m, layer) for m in res.model.modules()) >= 8
    assert any("calibration_n=4" in n and "calibration_seed=3" in n for n in res.notes)
    out = _out(res.model, x)
    assert (out - ref).norm() / ref.norm() < 0.3
    harness.save_compressed(res.model, tmp_path / fam)
    assert torch.equal(_out(harness.load_compressed(tmp_path / fam), x), out)


def _outlier_inputs(n=512, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    x[:, :3] *= 30  # a few outlier channels, as in LLM activations
    return x


def test_awq_scale_beats_rtn_on_outlier_channels():
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(1))
    x = _outlier_inputs()
    s = search_scale([w], x, x.abs().mean(0), 3, 16, False, grid=10)
    err_rtn = (x @ (w - rtn_fake_quant(w, 3, 16, False)).t()).pow(2).mean()
    err_awq = (x @ (w - rtn_fake_quant(w * s, 3, 16, False) / s).t()).pow(2).mean()
    assert err_awq < 0.9 * err_rtn


def test_smoothing_reduces_w8a8_error():
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(1)) * 0.1
    x = _outlier_inputs()
    ref = x @ w.t()
    errs = {}
    for alpha in (0.0, 0.5):
        s = smooth_scales(x.abs().amax(0), [w], alpha) if alpha else torch.ones(64)
        layer = W8A8Linear.from_weight(w * s, smooth=s)
        errs[alpha] = (layer(x) - ref).pow(2).mean()
    assert errs[0.5] < 0.5 * errs[0.0]


@pytest.mark.parametrize("spec", ["awq:bits=4", "smoothquant"])
def test_needs_calibration(llama, spec):
    with pytest.raises(CalibrationRequiredError):
        harness.compress(llama, spec)
