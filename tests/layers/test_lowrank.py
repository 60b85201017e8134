"""LowRankLinear: exact at full rank (plain, activation-scaled and whitened SVD), real
parameter savings, rank validation, and save -> load identity on every family."""
from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES, ids

from harness.checkpoint import load_compressed, save_compressed
from harness.config import SpecError
from harness.layers.lowrank import LowRankLinear, check_rank
from harness.techniques import compress
from harness.techniques.lowrank.svd import Decomposition, whitening

pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: one torch thread is faster


def _x(n: int = 256, d: int = 48) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, d, generator=g) * torch.linspace(0.1, 4.0, d)


@pytest.mark.parametrize("kind", ["none", "diag", "chol"])
def test_full_rank_reproduces_the_layer_exactly(kind):
    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 32)
    X = _x()
    T = {"none": None, "diag": X.abs().mean(0) ** 0.5, "chol": whitening(X.t() @ X / X.shape[0])}[kind]
    d = Decomposition(lin.weight, T, kind)
    A, B = d.factors(32)
    layer = LowRankLinear.from_factors(A, B, lin.bias, allow_full=True)
    torch.testing.assert_close(layer(X), lin(X), atol=1e-5, rtol=1e-5)


def test_conv1d_full_rank_exact():
    from transformers.pytorch_utils import Conv1D

    from harness.layers.base import linear_weight

    torch.manual_seed(0)
    conv = Conv1D(24, 40)
    A, B = Decomposition(linear_weight(conv)).factors(24)
    layer = LowRankLinear.from_factors(A, B, conv.bias, allow_full=True)
    x = torch.randn(3, 40)
    torch.testing.assert_close(layer(x), conv(x), atol=1e-5, rtol=1e-5)


def test_truncation_error_is_the_tail_energy():
    torch.manual_seed(0)
    W = torch.randn(32, 48)
    d = Decomposition(W)
    A, B = d.factors(10)
    err = (W - B @ A).pow(2).sum()
    torch.testing.assert_close(err.double(), d.S[10:].pow(2).sum(), rtol=1e-4, atol=1e-6)


def test_svd_llm_minimises_output_error_better_than_svd():
    """Whitening makes truncation optimal for ||(W - W_r) X^T||: never worse than plain SVD."""
    torch.manual_seed(0)
    W = torch.randn(32, 48)
    X = _x()
    H = X.t() @ X / X.shape[0]
    out_err = {}
    for kind, T in [("none", None), ("chol", whitening(H, 0.0))]:
        A, B = Decomposition(W, T, kind).factors(8)
        out_err[kind] = ((W - B @ A) @ X.t()).pow(2).sum().item()
    assert out_err["chol"] < 0.9 * out_err["none"]


def test_stored_params_and_state_dict_are_the_factors():
    layer = LowRankLinear(64, 32, 8, bias=True)
    assert layer.stored_params() == 8 * (64 + 32)
    assert layer.logical_params() == 64 * 32
    sd = layer.state_dict()
    assert set(sd) == {"A", "B", "bias"} and sd["A"].shape == (8, 64) and sd["B"].shape == (32, 8)


@pytest.mark.parametrize("rank", [0, -1, 32, 40])
def test_bad_rank_is_a_one_line_error(rank):
    with pytest.raises(SpecError) as e:
        check_rank(rank, 64, 32, "layer.x")
    assert "\n" not in str(e.value) and f"rank={rank}" in str(e.value)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_save_load_identical_logits(family, tmp_path):
    model = FAMILIES[family]()
    res = compress(model, "svd:reduction=0.5", kind="encoder" if family == "bert" else "causal-lm")
    assert any(isinstance(m, LowRankLinear) for m in res.model.modules())
    save_compressed(res.model, tmp_path / "m")
    back = load_compressed(tmp_path / "m")
    x = ids()
    with torch.no_grad():
        a, b = res.model(input_ids=x), back(input_ids=x)
    key = "last_hidden_state" if family == "bert" else "logits"
    assert torch.equal(a[key], b[key])
