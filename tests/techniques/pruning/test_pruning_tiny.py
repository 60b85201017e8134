"""Orderings the literature guarantees, on the trained harness-tiny (kept cheap)."""
from __future__ import annotations

import pytest
import torch

import harness
from harness.measure.accuracy import perplexity_window
from harness.techniques import TECHNIQUES
from harness.techniques.base import DeviceUnsupportedError
from harness.techniques.pruning.nm import nm_mask, to_semi_structured


def _ppl(lm, model) -> float:
    return perplexity_window(model, lm.tokenizer, "validation", window=128, max_tokens=4096)


def test_wanda_and_sparsegpt_beat_magnitude_at_half_sparsity(tiny_lm, tiny_calibration):
    import copy

    dense = _ppl(tiny_lm, tiny_lm.model)
    ppl = {}
    for spec in ("magnitude:sparsity=0.5", "wanda:sparsity=0.5", "sparsegpt:sparsity=0.5"):
        res = harness.compress(copy.deepcopy(tiny_lm.model), spec, calibration=tiny_calibration)
        ppl[spec.split(":")[0]] = _ppl(tiny_lm, res.model)
    assert dense < ppl["sparsegpt"] < ppl["wanda"] < ppl["magnitude"], ppl


def test_suite_specs_are_valid_and_storage_is_honest():
    for name in ("magnitude", "taylor", "obd", "wanda", "sparsegpt", "prune-neurons", "prune-heads",
                 "drop-layers"):
        cls = TECHNIQUES.get(name)
        assert cls.suite_specs and cls.family == "pruning"
        for spec in cls.suite_specs:
            assert harness.make(spec).storage in {"packed", "structural"}
    assert harness.make("wanda:sparsity=0.5,format=dense").storage == "mask"


def test_semi_structured_needs_cuda_on_cpu():
    lin = torch.nn.Linear(16, 8)
    with torch.no_grad():
        lin.weight.mul_(nm_mask(lin.weight.abs(), 2, 4))
    if torch.cuda.is_available():
        pytest.skip("CUDA present: covered by test_semi_structured_matches_dense_on_gpu")
    with pytest.raises(DeviceUnsupportedError, match="need a CUDA GPU"):
        to_semi_structured(lin)


@pytest.mark.gpu
def test_semi_structured_matches_dense_on_gpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU: 2:4 semi-structured kernels need one")
    lin = torch.nn.Linear(256, 128, bias=False).half().cuda()
    with torch.no_grad():
        lin.weight.mul_(nm_mask(lin.weight.abs(), 2, 4))
    x = torch.randn(64, 256, device="cuda", dtype=torch.float16)
    ref = lin(x)
    torch.testing.assert_close(to_semi_structured(lin)(x), ref, rtol=1e-2, atol=1e-2)
