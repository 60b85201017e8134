"""Mixed-precision GPTQ: the allocation is optimal and within budget on constructed
sensitivities, sensitive layers get more bits, the budget is the measured bits/param,
the Hutchinson trace matches the exact one, recipes round-trip, bad options fail in one line."""
from __future__ import annotations

import copy
import itertools
import json

import pytest
import torch
import yaml
from conftest import ids, random_llama

import harness
from harness.calibration import Calibration, target_linears
from harness.config import SpecError
from harness.layers.quant import QuantLinear
from harness.measure.size import measure_size, weight_storage
from harness.techniques.quantization.mixed import (
    MixedConfig,
    MixedGPTQ,
    allocate,
    bits_map,
    mixed_recipe,
    parse_widths,
    recipe_bits,
    stored_bits,
    write_recipe,
)
from harness.techniques.quantization.sensitivity import hutchinson_traces
from harness.techniques.spec import make

pytestmark = pytest.mark.usefixtures("one_thread")


def _brute_force(costs, omega, budget_bits):
    names = list(costs)
    best = None
    for combo in itertools.product(*(sorted(costs[n]) for n in names)):
        cost = sum(costs[n][b] for n, b in zip(names, combo))
        obj = sum(omega[n][b] for n, b in zip(names, combo))
        if cost <= budget_bits and (best is None or obj < best[0]):
            best = (obj, dict(zip(names, combo)))
    return best


def _constructed(seed: int):
    """Four layers of different shapes, omega = s_l * 4**-b with a per-layer kink."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"a": (64, 64), "b": (128, 64), "c": (64, 256), "d": (32, 96)}
    costs = {n: {b: stored_bits(o, i, b, None, True) for b in (2, 3, 4, 8)} for n, (o, i) in shapes.items()}
    omega = {}
    for n in shapes:
        s = float(torch.rand(1, generator=g)) * 10 + 0.1
        omega[n] = {b: s * 4.0 ** -b * (1 + 0.3 * float(torch.rand(1, generator=g))) for b in (2, 3, 4, 8)}
    return shapes, costs, omega


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("bpp", [2.5, 3.0, 3.6, 5.0])
def test_allocation_is_the_brute_force_optimum_within_budget(seed, bpp):
    shapes, costs, omega = _constructed(seed)
    n = sum(o * i for o, i in shapes.values())
    pick = allocate(costs, omega, bpp * n)
    used = sum(costs[k][b] for k, b in pick.items())
    assert used <= bpp * n
    best_obj, _ = _brute_force(costs, omega, bpp * n)
    assert sum(omega[k][b] for k, b in pick.items()) == pytest.approx(best_obj, rel=1e-9)


def test_allocation_meets_a_budget_exactly_when_that_is_optimal():
    # two equal layers, 100 weights each; 600 bits = average 3: (4, 2) costs exactly the budget
    costs = {"x": {2: 200, 4: 400}, "y": {2: 200, 4: 400}}
    omega = {"x": {2: 10.0, 4: 1.0}, "y": {2: 1.0, 4: 0.5}}
    assert allocate(costs, omega, 600) == {"x": 4, "y": 2}
    assert allocate(costs, omega, 599) == {"x": 2, "y": 2}  # one bit short: both stay at 2
    with pytest.raises(SpecError, match="below the 400 bits"):
        allocate(costs, omega, 399)


def test_more_sensitive_layers_get_more_bits():
    sens = [0.1, 0.5, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0]
    names = [f"l{i}" for i in range(len(sens))]
    costs = {n: {b: stored_bits(64, 64, b, None, True) for b in (2, 3, 4, 8)} for n in names}
    omega = {n: {b: s * 4.0 ** -b for b in (2, 3, 4, 8)} for n, s in zip(names, sens)}
    pick = allocate(costs, omega, 3.5 * 64 * 64 * len(names))
    widths = [pick[n] for n in names]
    assert widths == sorted(widths) and widths[0] < widths[-1]
    assert sum(costs[n][pick[n]] for n in names) <= 3.5 * 64 * 64 * len(names)


@pytest.mark.parametrize("shape,bits,group,sym", [((48, 64), 3, None, True), ((40, 100), 4, 32, False),
                                                  ((16, 72), 2, 64, True), ((8, 30), 8, 16, False)])
def test_stored_bits_is_what_size_measures(shape, bits, group, sym):
    layer = QuantLinear.from_weight(torch.randn(*shape), torch.randn(shape[0]), bits=bits, group=group, sym=sym)
    assert weight_storage(layer) == (stored_bits(*shape, bits, group, sym), shape[0] * shape[1])


@pytest.mark.parametrize("spec,match", [
    ("mixed:bits=9-2", "bits='9-2': low 9 is above high 2"),
    ("mixed:bits=1-4", "bits='1-4' is outside the supported widths 2, 3, 4, 8"),
    ("mixed:bits=two", "bits='two' is not a range"),
    ("mixed:bits=2-8,budget=9", "budget=9.0 bits/param is outside bits=2-8"),
    ("mixed:bits=2-4,budget=2", "budget=2.0 bits/param is outside bits=2-4: it must be above 2"),
    ("mixed:method=oracle", "method='oracle' is not allowed; choose one of hawq, fisher, probe, output"),
    ("mixed:probes=0", "probes=0 must be >= 1"),
])
def test_bad_options_are_one_line_errors(spec, match):
    with pytest.raises(SpecError) as e:
        make(spec)
    assert match in str(e.value) and "\n" not in str(e.value)


def test_widths_in_range():
    assert parse_widths("2-8") == (2, 3, 4, 8) and parse_widths("3-4") == (3, 4) and parse_widths("4") == (4,)


def test_recipe_round_trip(tmp_path):
    bmap = {"model.layers.0.self_attn.q_proj": 4, "model.layers.0.mlp.down_proj": 2,
            "model.layers.1.self_attn.q_proj": 8, "model.layers.1.mlp.down_proj": 4}
    recipe = mixed_recipe(bmap, group=64)
    assert [s["options"] for s in recipe["stages"]] == [{"bits": 8, "group": 64}, {"bits": 4, "group": 64},
                                                        {"bits": 2, "group": 64}]
    assert all(s["technique"] == "gptq" for s in recipe["stages"])
    assert recipe_bits(recipe) == bmap
    path = write_recipe(tmp_path / "r" / "mixed.yaml", recipe)
    assert recipe_bits(yaml.safe_load(path.read_text())) == bmap
    assert [p.name for p in path.parent.iterdir()] == ["mixed.yaml"]  # no temporary left behind
    with pytest.raises(SpecError, match="not a gptq stage"):
        recipe_bits({"stages": [{"technique": "rtn", "options": {"bits": 4}, "targets": ["x"]}]})


def test_a_written_recipe_runs_as_a_pipeline_with_the_same_layer_bits(tmp_path):
    pytest.importorskip("harness.techniques.recipe", reason="recipe files are the pipeline helper's")
    model = random_llama()
    bmap = {n: (2, 4)[i % 2] for i, n in enumerate(target_linears(model))}  # two stages: fast
    tech = make(str(write_recipe(tmp_path / "mixed.yaml", mixed_recipe(bmap))))
    res = harness.compress(model, tech, calibration=_calib())
    assert tech.name == "pipeline" and bits_map(res.model) == bmap


def _calib(n=4, seq=16):
    x = ids(n, seq)
    return Calibration(x, torch.ones_like(x))


def test_hutchinson_trace_is_the_rademacher_mean_of_the_exact_hessian():
    """The Hessian-vector products are exact (same vectors as the full Hessian gives), and the
    estimate lies within 4 standard deviations of the exact trace (Hutchinson's variance)."""
    from harness.techniques.quantization.sensitivity import _math_attention

    model = random_llama(hidden=16, layers=1, heads=2, kv_heads=1, inter=16).double()
    lin = {"v": model.model.layers[0].self_attn.v_proj}
    calib = _calib(4, 8)
    w, x = lin["v"].weight, calib.input_ids
    with torch.enable_grad(), _math_attention():
        g = torch.autograd.grad(model(input_ids=x, labels=x, use_cache=False).loss, w, create_graph=True)[0]
        H = torch.stack([torch.autograd.grad(g.reshape(-1)[i], w, retain_graph=True)[0].reshape(-1)
                         for i in range(w.numel())])
    probes = 64
    est = hutchinson_traces(model, lin, calib, probes=probes, batch_size=4)["v"]
    gen = torch.Generator().manual_seed(0)
    vs = [(torch.randint(0, 2, w.shape, generator=gen) * 2 - 1).double().reshape(-1) for _ in range(probes)]
    assert est == pytest.approx(float(sum(v @ H @ v for v in vs)) / probes / w.numel(), rel=1e-6)
    exact = float(torch.diagonal(H).sum())
    off = H - torch.diag(torch.diagonal(H))
    sd = float((2 * off.pow(2).sum() / probes).sqrt())
    assert abs(est * w.numel() - exact) <= 4 * sd and exact > 0


def test_output_stats_are_the_input_moment_and_output_gradient_energy():
    from harness.techniques.quantization.sensitivity import output_stats

    model = random_llama()
    lin = {"d": model.model.layers[1].mlp.down_proj}
    calib = _calib(2, 16)
    A, G = output_stats(model, lin, calib, batch_size=2)
    seen = {}
    h = lin["d"].register_forward_hook(lambda m, a, o: seen.update(x=a[0].detach(), y=o) or o.retain_grad())
    x = calib.input_ids
    model(input_ids=x, attention_mask=calib.attention_mask, labels=x, use_cache=False).loss.backward()
    h.remove()
    xs, gy = seen["x"].reshape(-1, 128), seen["y"].grad.reshape(-1, 64)
    assert torch.allclose(A["d"], xs.t() @ xs / xs.shape[0], rtol=1e-4, atol=1e-6)
    assert torch.allclose(G["d"], gy.pow(2).sum(0) / xs.shape[0], rtol=1e-4, atol=1e-12)
    assert all(p.requires_grad for p in model.parameters())  # flags restored


@pytest.mark.parametrize("method", ["hawq", "fisher", "probe", "output"])
def test_mixed_meets_the_budget_as_measured_and_records_its_map(method, tmp_path):
    model = random_llama()
    out = tmp_path / "recipe.yaml"
    tech = MixedGPTQ(MixedConfig(bits="2-8", budget=3.6, method=method, probes=2, recipe_out=str(out)))
    res = harness.compress(copy.deepcopy(model), tech, calibration=_calib())
    bpp = {r.metric: r.value for r in measure_size(res.model)}["size.bits_per_param"]
    assert bpp <= 3.6
    planned = next(n for n in res.notes if n.startswith("mixed precision"))
    assert f"planned {bpp:.4f}" in planned  # the plan is the measured figure
    noted = json.loads(next(n for n in res.notes if n.startswith("bits map: "))[len("bits map: "):])
    assert noted == bits_map(res.model) and set(noted) == set(target_linears(model))
    assert len(set(noted.values())) > 1  # really mixed
    assert recipe_bits(yaml.safe_load(out.read_text())) == noted
    assert res.extra["bits_map"] == noted and res.extra["planned_bits_per_param"] == pytest.approx(bpp)
    if method == "hawq":  # the mixed widths survive save -> load in a fresh model, logits identical
        path = harness.save_compressed(res.model, tmp_path / "ckpt", technique=res.spec)
        back = harness.load_compressed(path)
        assert bits_map(back) == noted
        x = ids()
        with torch.no_grad():
            assert torch.equal(back(x).logits, res.model(x).logits)


def test_a_yaml_recipe_out_in_a_spec_is_an_option_not_a_recipe_path():
    assert make("mixed:bits=2-8,budget=3.0,recipe_out=out/mixed.yaml").name == "mixed"


def test_one_width_is_exactly_uniform_gptq():
    """mixed quantizes through gptq's own solver and damping: one width, the same model."""
    model, x = random_llama(), ids()
    one = harness.compress(copy.deepcopy(model), "mixed:bits=3,budget=3.5", calibration=_calib()).model
    uni = harness.compress(copy.deepcopy(model), "gptq:bits=3", calibration=_calib()).model
    with torch.no_grad():
        assert torch.equal(one(x).logits, uni(x).logits)


def test_a_budget_the_model_cannot_store_is_refused_before_work():
    # hidden 64, per-channel scales: every layer at 2 bits still costs 2.25+ bits/param
    with pytest.raises(SpecError, match=r"budget=2.1 bits/param is below the 2\.2"):
        harness.compress(random_llama(), "mixed:bits=2-4,budget=2.1", calibration=_calib())


def test_sensitive_layers_of_tiny_get_more_bits_than_the_least_sensitive(tiny_lm, tiny_calibration):
    """On the trained model the allocation follows the measured sensitivity."""
    from harness.techniques.quantization.sensitivity import layer_sensitivity

    linears = target_linears(tiny_lm.model)
    omega = layer_sensitivity(tiny_lm.model, linears, tiny_calibration, (2, 3, 4), method="hawq", probes=4)
    assert all(omega[n][2] > omega[n][3] > omega[n][4] >= 0 for n in linears)
    costs = {n: {b: stored_bits(*linears[n].weight.shape, b, None, True) for b in (2, 3, 4)} for n in linears}
    pick = allocate(costs, omega, 3.0 * sum(m.weight.numel() for m in linears.values()))
    by_sens = sorted(linears, key=lambda n: omega[n][2] / linears[n].weight.numel())
    assert pick[by_sens[-1]] >= pick[by_sens[0]] and len(set(pick.values())) > 1


def test_cli_bad_budget_is_one_line_and_exit_2(capsys):
    from harness.cli import main

    code = main(["eval", "harness-tiny", "--technique", "mixed:bits=2-8,budget=12", "-m", "size.bytes"])
    err = capsys.readouterr().err
    assert code == 2 and "budget=12.0 bits/param is outside bits=2-8" in err and err.count("\n") == 1
