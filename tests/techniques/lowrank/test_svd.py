"""svd / asvd / svd-llm techniques and rank allocation: budgets really met, every family,
the whitening ordering on harness-tiny, one-line errors for impossible budgets."""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import FAMILIES, ids, random_llama

from harness.calibration import Calibration, target_linears
from harness.config import SpecError
from harness.layers.lowrank import LowRankLinear
from harness.techniques import compress, make
from harness.techniques.lowrank import rank_alloc

pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: one torch thread is faster


def _kept(model_before_linears, model_after) -> float:
    dense = sum(m.weight.numel() for m in model_before_linears.values())
    stored = 0
    for name in model_before_linears:
        m = model_after.get_submodule(name)
        stored += m.stored_params() if isinstance(m, LowRankLinear) else m.weight.numel()
    return stored / dense


@pytest.mark.parametrize("method", ["svd", "asvd", "svd-llm"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_budget_met_on_every_family(method, family):
    model = FAMILIES[family]()
    linears = target_linears(model)
    calib = Calibration(ids(4, 32))
    res = compress(model, f"{method}:reduction=0.4", calib, kind="encoder" if family == "bert" else "causal-lm")
    assert sum(isinstance(m, LowRankLinear) for m in res.model.modules()) == len(linears)
    kept = _kept(linears, res.model)
    assert 0.55 <= kept <= 0.6
    assert res.storage == "structural"
    with torch.no_grad():
        assert torch.isfinite(res.model(input_ids=ids())[0]).all()


@pytest.mark.parametrize("alloc", ["energy", "sensitivity"])
def test_allocation_meets_the_global_budget_with_unequal_ranks(alloc):
    model = random_llama()
    linears = target_linears(model)
    res = compress(model, f"svd-llm:reduction=0.5,alloc={alloc}", Calibration(ids(8, 32)))
    assert _kept(linears, res.model) <= 0.5
    ranks = {m.rank for m in res.model.modules() if isinstance(m, LowRankLinear)}
    assert len(ranks) > 1


def test_energy_allocation_prefers_the_layer_with_concentrated_spectrum():
    lin = {"flat": torch.nn.Linear(32, 32), "peaked": torch.nn.Linear(32, 32)}
    energies = {"flat": torch.ones(32), "peaked": torch.tensor([100.0, 50, 20, 10] + [0.01] * 28)}
    ranks = rank_alloc.by_energy(lin, energies, reduction=0.8)
    assert ranks["peaked"] >= 4 and ranks["peaked"] > ranks["flat"] - 4


def test_svd_llm_beats_plain_svd_on_harness_tiny(tiny_lm, tiny_calibration):

    from harness.measure.accuracy import perplexity_window

    ppl = {}
    for spec in ["svd:reduction=0.4", "svd-llm:reduction=0.4"]:
        m = compress(copy.deepcopy(tiny_lm.model), spec, tiny_calibration).model
        ppl[spec] = perplexity_window(m, tiny_lm.tokenizer, "validation", window=128, max_tokens=4096)
    assert ppl["svd-llm:reduction=0.4"] < ppl["svd:reduction=0.4"]


@pytest.mark.parametrize("spec,match", [
    ("svd:reduction=0.999", "cannot be met"),
    ("svd:reduction=1.5", "reduction=1.5"),
    ("svd:reduction=0", "reduction=0"),
    ("svd:rank=64", "rank=64"),
    ("svd:rank=0", "rank=0"),
    ("asvd:alpha=5", "alpha=5"),
    ("svd:alloc=sensitivity,sens_windows=0", "sens_windows=0"),
])
def test_bad_input_is_a_one_line_error(spec, match):
    with pytest.raises(SpecError, match=match) as e:
        compress(random_llama(), spec, Calibration(ids(2, 16)))
    assert "\n" not in str(e.value)


def test_sensitivity_allocation_needs_calibration_even_for_plain_svd():
    assert make("svd").needs_calibration is False
    assert make("svd:alloc=sensitivity").needs_calibration is True


def _outlier_layer(seed: int = 0):
    """A 64x64 layer whose inputs have 4 channels ~20x larger than the rest (as in LLMs)."""
    from harness.calibration import InputStats

    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(64, 64, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(64, 64, generator=g))
    x = torch.randn(2048, 64, generator=g)
    x[:, :4] *= 20
    return lin, InputStats(hessian=x.t() @ x, abs_mean=x.abs().mean(0), n=x.shape[0])


def test_asvd_search_takes_the_alpha_with_least_output_error():
    from harness.techniques.lowrank.svd import ALPHAS, output_error

    lin, stats = _outlier_layer()
    W, rank = lin.weight, 16
    per_alpha = {}
    for a in ALPHAS:
        dec = make(f"asvd:alpha={a}").decompose("l", lin, stats, rank)
        A, B = dec.factors(rank)
        per_alpha[a] = output_error(W, B @ A, stats.H)
    tech = make("asvd:search=true")
    dec = tech.decompose("l", lin, stats, rank)
    A, B = dec.factors(rank)
    searched = output_error(W, B @ A, stats.H)
    assert searched == pytest.approx(min(per_alpha.values()), rel=1e-9)
    # activation-aware scaling pays on outlier channels: clearly below plain SVD (alpha=0)
    assert per_alpha[0.5] < 0.7 * per_alpha[0.0] and dec.alpha > 0
    assert vars(tech) == {"config": tech.config}  # the choice is on the decomposition, not the technique


def test_sequential_update_lowers_the_distillation_loss():
    import torch.nn.functional as F

    calib = Calibration(ids(8, 32))
    model = random_llama()
    with torch.no_grad():
        ref = F.log_softmax(model(input_ids=calib.input_ids).logits, -1)

    def kl(spec):
        m = compress(copy.deepcopy(model), spec, calib).model
        with torch.no_grad():
            out = F.log_softmax(m(input_ids=calib.input_ids).logits, -1)
        return F.kl_div(out, ref, log_target=True, reduction="batchmean").item(), m


    base, _ = kl("svd-llm:reduction=0.6")
    tuned, m = kl("svd-llm:reduction=0.6,update_steps=30,update_lr=0.003")
    assert tuned < 0.9 * base
    ranks = {x.rank for x in m.modules() if isinstance(x, LowRankLinear)}
    assert ranks == {x.rank for x in compress(copy.deepcopy(model), "svd-llm:reduction=0.6", calib).model.modules()
                     if isinstance(x, LowRankLinear)}


@pytest.mark.parametrize("spec,match", [("svd:update_steps=-1", "update_steps=-1"),
                                        ("svd-llm:update_lr=0", "update_lr=0")])
def test_bad_update_options(spec, match):
    with pytest.raises(SpecError, match=match):
        make(spec)
