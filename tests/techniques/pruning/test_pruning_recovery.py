"""Recovery fine-tune: lowers the training loss and never revives pruned weights."""
from __future__ import annotations

import pytest
import torch
from conftest import ids

import harness
from harness.calibration import Calibration
from harness.layers.sparse import SparseLinear


def _calib() -> Calibration:
    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, 16, (1, 8), generator=g)
    return Calibration(base.repeat(4, 4))  # repetitive text: easy to fit


@torch.no_grad()
def _loss(model, calib) -> float:
    x = calib.input_ids
    return float(model(input_ids=x, labels=x).loss)


@pytest.mark.parametrize("mode,fmt", [("lora", "auto"), ("full", "dense")])
def test_recovery_keeps_sparsity_and_lowers_loss(llama, mode, fmt):
    calib = _calib()
    res = harness.compress(llama, f"magnitude:sparsity=0.5,format={fmt}")
    before = {n: (m.keep_mask() if isinstance(m, SparseLinear) else m.weight != 0).clone()
              for n, m in res.model.named_modules() if isinstance(m, SparseLinear) or n.endswith("proj")}
    loss0 = _loss(res.model, calib)
    rec = harness.compress(res.model, f"recover:steps=6,mode={mode},lr=0.01", calibration=calib)
    assert _loss(rec.model, calib) < 0.9 * loss0
    for n, keep in before.items():
        m = rec.model.get_submodule(n)
        now = m.keep_mask() if isinstance(m, SparseLinear) else m.weight != 0
        assert type(m).__name__ == ("SparseLinear" if fmt == "auto" else "Linear")
        assert not (now & ~keep).any(), n  # no pruned weight came back


def test_recovered_sparse_model_reloads(tmp_path, llama):
    res = harness.compress(llama, "wanda:sparsity=0.5", calibration=_calib())
    rec = harness.compress(res.model, "recover:steps=2", calibration=_calib())
    x = ids()
    back = harness.load_compressed(harness.save_compressed(rec.model, tmp_path / "m"))
    assert torch.equal(back(input_ids=x).logits, rec.model(input_ids=x).logits)


def test_recovery_needs_calibration(llama):
    with pytest.raises(ValueError, match="'recover' needs calibration"):
        harness.compress(llama, "recover:steps=2")
