"""NF4 / k-means codebooks and QAT: storage, error vs uniform, exact export, save/load."""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import ids, random_llama

import harness
from harness.calibration import Calibration
from harness.layers.exec import reference_forward
from harness.layers.quant import CodebookLinear, QuantLinear
from harness.primitives.codebook import NF4_LEVELS, codebook_quantize, kmeans_1d
from harness.primitives.quant import rtn_fake_quant
from harness.techniques.base import CalibrationRequiredError
from harness.techniques.quantization.qat import FakeQuantLinear

pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: one torch thread is faster


def _logits(m, x):
    with torch.no_grad():
        return m(x).logits


def test_nf4_picks_nearest_level():
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    idx, cb, s = codebook_quantize(w, 4, 16, NF4_LEVELS, scaled=True)
    wn = w / s.repeat_interleave(16, 1)
    assert wn.abs().max() <= 1
    dist = (wn.unsqueeze(-1) - cb).abs()
    assert torch.allclose(dist.gather(-1, idx.long().unsqueeze(-1)).squeeze(-1), dist.min(-1).values)


def test_kmeans_beats_uniform_grid_on_gaussian_weights():
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(0))
    cb = kmeans_1d(w, 16)
    idx, cb, _ = codebook_quantize(w, 4, None, cb, scaled=False)
    err_km = (w - cb[idx.long()]).pow(2).mean()
    # same overhead: one uniform 16-level grid for the whole tensor
    err_uni = (w - rtn_fake_quant(w.reshape(1, -1), 4, None, False).reshape(w.shape)).pow(2).mean()
    assert err_km < 0.8 * err_uni


@pytest.mark.parametrize("spec,bits_pp", [("nf4:group=32", 4 + 16 / 32), ("kmeans:bits=3", 3.0),
                                          ("kmeans:bits=4,group=64", 4 + 16 / 64)])
def test_codebook_storage_and_save_load(spec, bits_pp, tmp_path):
    model = random_llama()
    x = ids()
    ref = _logits(model, x)
    res = harness.compress(copy.deepcopy(model), spec)
    layers = [m for m in res.model.modules() if isinstance(m, CodebookLinear)]
    assert len(layers) == 14
    bits = sum(t.numel() * t.element_size() * 8 for m in layers for n, t in m.state_dict().items() if n != "bias")
    logical = sum(m.logical_params() for m in layers)
    cb_bits = sum(m.codebook.numel() * 16 for m in layers)
    assert (bits - cb_bits) / logical == pytest.approx(bits_pp)
    out = _logits(res.model, x)
    assert (out - ref).norm() / ref.norm() < 0.5
    harness.save_compressed(res.model, tmp_path / "m")
    assert torch.equal(_logits(harness.load_compressed(tmp_path / "m"), x), out)


def test_fake_quant_export_is_exact():
    lin = torch.nn.Linear(64, 16)
    fq = FakeQuantLinear(lin, 3, 16, False)
    with torch.no_grad():
        fq.weight.add_(0.01 * torch.randn_like(fq.weight))
        fq.scale.mul_(0.9)
    q = fq.export()
    assert isinstance(q, QuantLinear)
    x = torch.randn(4, 64)
    with torch.no_grad(), reference_forward():  # exact codes: compare on the torch path, not the bf16 kernel
        torch.testing.assert_close(q(x), fq(x))


def test_qat_trains_and_exports_packed(tmp_path):
    model = random_llama()
    xs = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    calib = Calibration(xs, torch.ones_like(xs))
    res = harness.compress(copy.deepcopy(model), "qat:bits=2,group=32,steps=8,lr=1e-3,batch=4", calibration=calib)
    assert res.storage == "packed"
    assert sum(isinstance(m, QuantLinear) for m in res.model.modules()) == 14
    assert not any(isinstance(m, FakeQuantLinear) for m in res.model.modules())
    assert all(p.requires_grad for p in res.model.parameters())  # flags restored
    rtn = harness.compress(copy.deepcopy(model), "rtn:bits=2,group=32").model
    ref = _logits(model, xs)

    def kl(m):
        return torch.nn.functional.kl_div(torch.log_softmax(_logits(m, xs), -1), torch.log_softmax(ref, -1),
                                          log_target=True, reduction="batchmean")
    assert kl(res.model) < kl(rtn)  # trained on these windows: must be closer to fp32 than RTN
    harness.save_compressed(res.model, tmp_path / "q")
    assert torch.equal(_logits(harness.load_compressed(tmp_path / "q"), xs), _logits(res.model, xs))


def test_qat_needs_calibration():
    with pytest.raises(CalibrationRequiredError):
        harness.compress(random_llama(), "qat:bits=2")
