"""Unstructured / N:M pruning: exact counts, honest storage, round trips, bad input."""
from __future__ import annotations

import copy

import pytest
import torch

import harness
from harness.calibration import Calibration, target_linears
from harness.config import SpecError
from harness.layers.base import linear_weight
from harness.layers.sparse import SparseLinear
from harness.measure.size import weight_storage
from harness.techniques.base import CalibrationRequiredError
from harness.techniques.pruning.sparsegpt import sparsegpt_prune


def _calib(vocab: int = 128, n: int = 4, seq: int = 32) -> Calibration:
    return Calibration(torch.randint(0, vocab, (n, seq), generator=torch.Generator().manual_seed(3)))


def _keep(mod) -> torch.Tensor:
    return mod.keep_mask() if isinstance(mod, SparseLinear) else linear_weight(mod) != 0


def _kind(family: str) -> str:
    return "encoder" if family == "bert" else "causal-lm"


@pytest.mark.parametrize("spec", ["magnitude:sparsity=0.5", "wanda:sparsity=0.3", "sparsegpt:sparsity=0.6"])
def test_exact_sparsity_per_layer_every_family(family_model, spec):
    fam, model = family_model
    names = list(target_linears(model))
    res = harness.compress(model, spec, calibration=_calib(), kind=_kind(fam))
    s = res.config.target
    for name in names:
        keep = _keep(res.model.get_submodule(name))
        if spec.startswith("wanda"):  # Wanda compares within each output row: exact per row
            assert torch.all((~keep).sum(1) == round(s * keep.shape[1])), name
        else:
            assert int((~keep).sum()) == round(s * keep.numel()), name


@pytest.mark.parametrize("spec", ["taylor:sparsity=0.5", "obd:sparsity=0.4"])
def test_gradient_methods_exact_sparsity(llama, spec):
    names = list(target_linears(llama))
    res = harness.compress(llama, spec, calibration=_calib())
    for name in names:  # default scope=row: exact per output row
        keep = _keep(res.model.get_submodule(name))
        assert torch.all((~keep).sum(1) == round(res.config.target * keep.shape[1])), name


def test_magnitude_row_scope_exact_per_row(llama):
    names = list(target_linears(llama))
    res = harness.compress(llama, "magnitude:sparsity=0.3,scope=row")
    for name in names:
        keep = _keep(res.model.get_submodule(name))
        assert torch.all((~keep).sum(1) == round(0.3 * keep.shape[1])), name


@pytest.mark.parametrize("spec,n,m", [("magnitude:pattern=2:4", 2, 4), ("wanda:pattern=2:4", 2, 4),
                                      ("sparsegpt:pattern=4:8", 4, 8), ("obd:pattern=2:4", 2, 4)])
def test_exact_nm_per_group(llama, spec, n, m):
    names = list(target_linears(llama))
    res = harness.compress(llama, spec, calibration=_calib())
    for name in names:
        keep = _keep(res.model.get_submodule(name))
        groups = keep.reshape(keep.shape[0], -1, m).sum(-1)
        assert torch.all(groups == n), name


def test_magnitude_matches_torch_prune_l1(llama):
    from torch.nn.utils import prune

    ref = copy.deepcopy(llama.model.layers[0].self_attn.q_proj)
    prune.l1_unstructured(ref, "weight", amount=0.5)
    res = harness.compress(llama, "magnitude:sparsity=0.5")
    assert torch.equal(res.model.model.layers[0].self_attn.q_proj.keep_mask(), ref.weight_mask.bool())


def test_global_scope_exact_total_and_uneven_layers(llama):
    names = list(target_linears(llama))
    res = harness.compress(llama, "magnitude:sparsity=0.5,scope=global")
    keeps = [_keep(res.model.get_submodule(n)) for n in names]
    total = sum(k.numel() for k in keeps)
    assert sum(int((~k).sum()) for k in keeps) == round(0.5 * total)
    assert len({round(float((~k).float().mean()), 3) for k in keeps}) > 1  # global ranks differ per layer


def test_dense_format_is_a_mask_with_no_size_saving(llama):
    bits0, _ = weight_storage(llama)
    res = harness.compress(llama, "magnitude:sparsity=0.5,format=dense")
    assert res.storage == "mask"
    assert not any(isinstance(m, SparseLinear) for m in res.model.modules())
    assert weight_storage(res.model)[0] == bits0


def test_packed_storage_is_smaller_and_counts_metadata(llama):
    bits0, logical0 = weight_storage(llama)
    res = harness.compress(llama, "wanda:sparsity=0.5", calibration=_calib())
    assert res.storage == "packed"
    bits, logical = weight_storage(res.model)
    assert logical == logical0
    pruned = sum(m.logical_params() for m in res.model.modules() if isinstance(m, SparseLinear))
    # fp32 at 50%: 16 value bits + 1 mask bit per pruned-layer weight
    assert bits == bits0 - pruned * 32 + pruned * 16 + pruned * 1


def test_save_load_identical_logits_packed(tmp_path, family_model):
    from conftest import ids

    fam, model = family_model
    res = harness.compress(model, "sparsegpt:sparsity=0.5", calibration=_calib(), kind=_kind(fam))
    x = ids()
    key = "logits" if fam != "bert" else "last_hidden_state"
    ref = getattr(res.model(input_ids=x), key)
    back = harness.load_compressed(harness.save_compressed(res.model, tmp_path / fam))
    assert torch.equal(getattr(back(input_ids=x), key), ref)


def test_sparsegpt_reconstructs_better_than_masking_alone():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(512, 64, generator=g) @ torch.randn(64, 64, generator=g)  # correlated inputs
    W = torch.randn(32, 64, generator=g)
    Wn, keep = sparsegpt_prune(W, X.t() @ X, 0.5, None, blocksize=16)
    assert int((~keep).sum()) == 32 * 32 and torch.all(Wn[~keep] == 0)
    from harness.techniques.pruning.nm import lowest_mask

    err_sgpt = (X @ (W - Wn).t()).norm()
    err_mask_only = (X @ (W - W * keep).t()).norm()  # same mask, no OBS update
    err_mag = (X @ (W - W * lowest_mask(W.abs(), 0.5)).t()).norm()
    assert err_sgpt < 0.8 * err_mask_only and err_sgpt < err_mag


@pytest.mark.parametrize("spec,match", [
    ("magnitude:sparsity=1.0", r"sparsity=1.0 is outside \[0, 1\)"),
    ("magnitude:sparsity=-0.1", r"outside \[0, 1\)"),
    ("wanda:pattern=4:4", "N must be smaller than M"),
    ("wanda:pattern=5:4", "N must be smaller than M"),
    ("magnitude:pattern=2-4", "use 'unstructured' or N:M"),
    ("magnitude:sparsity=0.3,pattern=2:4", "contradicts pattern"),
    ("magnitude:scope=block", "scope='block' is not allowed"),
])
def test_bad_specs_are_one_line_errors(spec, match):
    with pytest.raises(SpecError, match=match) as e:
        harness.make(spec)
    assert "\n" not in str(e.value)


def test_m_not_dividing_in_features(llama):
    with pytest.raises(SpecError, match="M=3 does not divide in_features=64"):
        harness.compress(llama, "magnitude:pattern=2:3")


@pytest.mark.parametrize("name", ["wanda", "sparsegpt", "taylor", "obd"])
def test_calibration_required(llama, name):
    with pytest.raises(CalibrationRequiredError, match=f"'{name}' needs calibration"):
        harness.compress(llama, f"{name}:sparsity=0.5")
