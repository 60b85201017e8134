"""Ragged last groups: a group size that does not divide a layer's in_features.

``n_groups = ceil(in / group)`` and the last group holds the remaining ``in % group``
inputs. Covers the primitives (RTN round trip and its s/2 bound), every group-wise
quantizer (rtn, gptq, awq, nf4, kmeans, qat, caldera) on models whose widths group 32
does not divide (hidden 48, intermediate 80), honest bits/param, save -> load identity,
GPTQ <= RTN at 3 bits, and every registered technique's *default* spec on a 48-wide
Llama and a 64-wide GPT-2 (default group sizes 64/128 are wider than such layers).
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import ids, random_gpt2, random_llama

import harness
import harness.techniques  # noqa: F401  (registers every technique)
from harness.calibration import Calibration
from harness.config import SpecError
from harness.layers.exec import reference_forward
from harness.layers.qlr import QLRLinear
from harness.layers.quant import CodebookLinear, QuantLinear
from harness.measure.size import measure_size, weight_storage
from harness.primitives.codebook import group_absmax
from harness.primitives.packing import packed_width
from harness.primitives.quant import (
    dequantize_groupwise,
    expand_groups,
    n_groups,
    quantize_groupwise,
    rtn_fake_quant,
)
from harness.primitives.scales import search_clip
from harness.techniques import TECHNIQUES
from harness.techniques.quantization.gptq import gptq_quantize
from harness.techniques.quantization.qat import FakeQuantLinear

pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: one torch thread is faster

GROUP = 32  # divides neither 48 nor 80: every layer of the odd Llama has a ragged last group of 16


def odd_llama():
    """Random Llama whose linears are 48/24/80 wide (4 heads of 12, 2 KV heads)."""
    return random_llama(hidden=48, inter=80, heads=4, kv_heads=2)


def _calib(n: int = 4, seq: int = 32, seed: int = 3) -> Calibration:
    x = torch.randint(0, 128, (n, seq), generator=torch.Generator().manual_seed(seed))
    return Calibration(x, torch.ones_like(x), seed=seed)


def _logits(model, x):
    with torch.no_grad():
        return model(x).logits


def _rel_err(model, ref_model, x) -> float:
    ref = _logits(ref_model, x)
    return float((_logits(model, x) - ref).norm() / ref.norm())


# ---------------------------------------------------------------- primitives
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [True, False])
def test_round_trip_with_a_ragged_last_group(bits, sym):
    w = torch.randn(8, 40, generator=torch.Generator().manual_seed(bits)) * 0.05 + 0.01
    codes, scales, zeros = quantize_groupwise(w, bits, 16, sym)  # groups of 16, 16 and 8
    assert codes.shape == (8, 40) and codes.dtype == torch.uint8 and int(codes.max()) < 2 ** bits
    assert scales.shape == (8, 3) and (zeros is None) == sym
    if not sym:
        assert zeros.shape == (8, 3) and zeros.dtype == torch.uint8
    w_hat = dequantize_groupwise(codes, scales, zeros, bits, 16)
    assert w_hat.shape == (8, 40)
    step = expand_groups(scales.float(), 16, 40)
    assert step.shape == (8, 40) and torch.equal(step[:, 32:], scales[:, 2:].float().expand(8, 8))
    assert torch.all((w - w_hat).abs() <= step / 2 * (1 + 1e-4) + 1e-7)
    # the ragged group's parameters come from its 8 real inputs only (padding changes nothing)
    c_last, s_last, z_last = quantize_groupwise(w[:, 32:], bits, None, sym)
    assert torch.equal(scales[:, 2:], s_last) and torch.equal(codes[:, 32:], c_last)
    assert sym or torch.equal(zeros[:, 2:], z_last)


def test_group_wider_than_the_row_is_one_group():
    w = torch.randn(4, 24)
    codes, scales, _ = quantize_groupwise(w, 4, 128, True)
    assert scales.shape == (4, 1) and n_groups(24, 128) == 1
    ref = quantize_groupwise(w, 4, None, True)
    assert torch.equal(codes, ref[0]) and torch.equal(scales, ref[1])


def test_impossible_configs_are_one_line_spec_errors():
    for spec, match in [("rtn:group=0", "group=0 must be a positive integer"), ("rtn:bits=5", "bits=5"),
                        ("gptq:bits=6,group=32", "bits=6"), ("nf4:group=0", "group=0"),
                        ("caldera:q_group=0", "q_group=0")]:
        with pytest.raises(SpecError, match=match) as e:
            harness.make(spec)
        assert "\n" not in str(e.value)
    with pytest.raises(SpecError, match="group=0"):
        quantize_groupwise(torch.randn(2, 8), 4, 0, True)


# ---------------------------------------------------------------- layers and storage
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [True, False])
def test_quant_linear_ragged_forward_and_storage(bits, sym):
    w = torch.randn(24, 72, generator=torch.Generator().manual_seed(bits)) * 0.1
    b = torch.randn(24)
    layer = QuantLinear.from_weight(w, b, bits=bits, group=GROUP, sym=sym)  # groups 32, 32, 8
    assert layer.qweight.shape == (24, packed_width(72, bits)) and layer.scales.shape == (24, 3)
    assert layer.codes().shape == (24, 72)
    assert (layer.zeros is None) == sym and (sym or layer.zeros.shape == (24, 3))
    deq = layer.dequantize()
    assert torch.all((deq - w).abs() <= expand_groups(layer.scales.float(), GROUP, 72) / 2 * (1 + 1e-3) + 1e-6)
    x = torch.randn(5, 72)
    with torch.no_grad():
        with reference_forward():  # the torch path (the CPU kernel's bf16 error: tests/layers/test_exec.py)
            assert torch.allclose(layer(x), x @ deq.T + b, atol=1e-5)
    # stored bits: codes for exactly 72 inputs, one float16 scale (+ uint8 zero) per group
    hand = bits * 72 * 24 + 16 * 24 * 3 + (0 if sym else 8 * 24 * 3)
    lin = torch.nn.Sequential(layer)
    assert weight_storage(lin) == (hand, 72 * 24)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_ragged_rtn_model_save_load_and_bits_per_param(bits, tmp_path):
    model = odd_llama()
    x = ids()
    res = harness.compress(copy.deepcopy(model), f"rtn:bits={bits},group={GROUP},sym=false")
    layers = [m for m in res.model.modules() if isinstance(m, QuantLinear)]
    assert len(layers) == 14 and all(m.in_features % GROUP for m in layers)
    assert all(m.scales.shape == (m.out_features, math.ceil(m.in_features / GROUP)) for m in layers)
    out = _logits(res.model, x)
    assert torch.isfinite(out).all()
    harness.save_compressed(res.model, tmp_path / "m")
    assert torch.equal(_logits(harness.load_compressed(tmp_path / "m"), x), out)
    hand = sum(bits * m.in_features * m.out_features + (16 + 8) * m.out_features * math.ceil(m.in_features / GROUP)
               for m in layers)
    logical = sum(m.in_features * m.out_features for m in layers)
    assert weight_storage(res.model) == (hand, logical)
    bpp = {r.metric: r.value for r in measure_size(res.model)}["size.bits_per_param"]
    assert bpp == pytest.approx(hand / logical)
    assert bits < bpp <= bits + 1  # at most 2 groups x (16 + 8) bits per 48 inputs


def test_codebook_linear_ragged_groups(tmp_path):
    model = odd_llama()
    x = ids()
    res = harness.compress(copy.deepcopy(model), f"nf4:group={GROUP}")
    layers = [m for m in res.model.modules() if isinstance(m, CodebookLinear)]
    assert len(layers) == 14
    for m in layers:
        assert m.scales.shape == (m.out_features, math.ceil(m.in_features / GROUP))
    out = _logits(res.model, x)
    assert torch.isfinite(out).all() and _rel_err(res.model, model, x) < 0.5
    harness.save_compressed(res.model, tmp_path / "nf4")
    assert torch.equal(_logits(harness.load_compressed(tmp_path / "nf4"), x), out)
    hand = sum(4 * m.in_features * m.out_features + 16 * m.scales.numel() + 16 * 16 for m in layers)
    assert weight_storage(res.model)[0] == hand


def test_group_absmax_and_kmeans_on_a_ragged_group():
    w = torch.randn(6, 40, generator=torch.Generator().manual_seed(0))
    s = group_absmax(w, 16)
    assert s.shape == (6, 3)
    assert torch.all(s[:, 2] >= w[:, 32:].abs().amax(1)) and torch.allclose(s[:, 2], w[:, 32:].abs().amax(1),
                                                                             rtol=1e-3)
    res = harness.compress(odd_llama(), f"kmeans:bits=3,group={GROUP}")
    layers = [m for m in res.model.modules() if isinstance(m, CodebookLinear)]
    assert len(layers) == 14 and all(m.scales.shape[1] == math.ceil(m.in_features / GROUP) for m in layers)
    assert torch.isfinite(_logits(res.model, ids())).all()


def test_qlr_linear_ragged_groups(tmp_path):
    g = torch.Generator().manual_seed(0)
    Q, L, R = torch.randn(40, 72, generator=g), torch.randn(40, 4, generator=g), torch.randn(4, 72, generator=g)
    layer = QLRLinear.from_float(Q, L, R, q_bits=2, q_group=GROUP, lr_bits=4, lr_group=GROUP)
    assert layer.q_scales.shape == (40, 3) and layer.r_scales.shape == (4, 3)
    Qd, Ld, Rd = layer.factors()
    assert torch.all((Qd - Q).abs() <= expand_groups(layer.q_scales.float(), GROUP, 72) / 2 * (1 + 1e-3) + 1e-6)
    x = torch.randn(3, 72)
    with torch.no_grad():
        with reference_forward():  # the torch path (the CPU kernel's bf16 error: tests/layers/test_exec.py)
            assert torch.allclose(layer(x), x @ (Qd + Ld @ Rd).T, atol=1e-4)


def test_caldera_ragged_q_group(tmp_path):  # LDLQ, LPLR and the LoRA fine-tune of L, R
    model = odd_llama()
    x = ids()
    spec = f"caldera:q_group={GROUP},lr_group=16,iters=1,lora_steps=2,lora_batch=2"
    res = harness.compress(copy.deepcopy(model), spec, calibration=_calib())
    layers = [m for m in res.model.modules() if isinstance(m, QLRLinear)]
    assert len(layers) == 14
    for m in layers:
        assert m.q_scales.shape == (m.out_features, math.ceil(m.in_features / GROUP))
        assert m.r_scales.shape == (m.rank, math.ceil(m.in_features / 16))
    out = _logits(res.model, x)
    assert torch.isfinite(out).all() and _rel_err(res.model, model, x) < 0.5
    harness.save_compressed(res.model, tmp_path / "c")
    assert torch.equal(_logits(harness.load_compressed(tmp_path / "c"), x), out)


# ---------------------------------------------------------------- GPTQ, AWQ, QAT
def _layer_objective(w, w_hat, H):
    d = (w_hat - w).double()
    return float(torch.trace(d @ H.double() @ d.T))


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_ragged_groups_beat_rtn_layerwise(act_order):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 72, generator=g) * 0.1
    x = torch.randn(512, 72, generator=g) @ (torch.eye(72) + 0.5 * torch.randn(72, 72, generator=g))  # correlated
    H = x.T @ x / x.shape[0]
    codes, scales, zeros = gptq_quantize(w, H, 3, GROUP, False, act_order=act_order)
    assert codes.shape == (40, 72) and scales.shape == (40, 3) and zeros.shape == (40, 3)
    w_gptq = dequantize_groupwise(codes, scales, zeros, 3, GROUP)
    w_rtn = rtn_fake_quant(w, 3, GROUP, False)
    assert _layer_objective(w, w_gptq, H) < 0.9 * _layer_objective(w, w_rtn, H)


def test_gptq_beats_rtn_at_3_bits_on_an_odd_width_model():
    model = odd_llama()
    held_out = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(100))
    errs = {}
    for spec in (f"rtn:bits=3,group={GROUP}", f"gptq:bits=3,group={GROUP}"):
        res = harness.compress(copy.deepcopy(model), spec, calibration=_calib(n=8))
        assert all(m.scales.shape[1] == math.ceil(m.in_features / GROUP)
                   for m in res.model.modules() if isinstance(m, QuantLinear))
        errs[spec.split(":")[0]] = _rel_err(res.model, model, held_out)
    assert errs["gptq"] <= errs["rtn"], errs


def test_awq_clip_search_on_a_ragged_group():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(16, 72, generator=g)
    x = torch.randn(256, 72, generator=g)
    wc = search_clip(w, x, 3, GROUP, False)
    assert wc.shape == w.shape
    err = lambda v: float((x @ (w - rtn_fake_quant(v, 3, GROUP, False)).T).pow(2).mean())  # noqa: E731
    assert err(wc) <= err(w) * (1 + 1e-6)  # ratio 1.0 is a candidate for every group
    res = harness.compress(odd_llama(), f"awq:bits=3,group={GROUP},grid=4,samples=64", calibration=_calib())
    layers = [m for m in res.model.modules() if isinstance(m, QuantLinear)]
    assert len(layers) == 14 and all(m.scales.shape[1] == math.ceil(m.in_features / GROUP) for m in layers)
    assert torch.isfinite(_logits(res.model, ids())).all()


def test_qat_fake_quant_with_a_ragged_group_trains_its_scale_and_exports_exactly():
    torch.manual_seed(0)
    lin = torch.nn.Linear(72, 24)
    fq = FakeQuantLinear(lin, 3, GROUP, False)
    assert fq.scale.shape == (24, 3) and fq.zero.shape == (24, 3)
    x = torch.randn(8, 72)
    with torch.enable_grad():
        fq(x).pow(2).sum().backward()
    assert fq.scale.grad is not None and fq.scale.grad[:, 2].abs().sum() > 0  # the ragged group learns
    assert fq.weight.grad is not None and fq.weight.grad[:, 64:].abs().sum() > 0
    q = fq.export()
    assert isinstance(q, QuantLinear) and q.scales.shape == (24, 3)
    assert torch.allclose(q.dequantize(), fq.fake_weight().detach(), atol=1e-6)
    res = harness.compress(odd_llama(), f"qat:bits=3,group={GROUP},steps=2,batch=2", calibration=_calib())
    assert torch.isfinite(_logits(res.model, ids())).all()


# ---------------------------------------------------------------- kernels fall back
def test_kernel_dispatch_falls_back_on_a_ragged_group():
    from harness.kernels import dispatch, reference

    layer = QuantLinear.from_weight(torch.randn(24, 72), bits=4, group=GROUP, sym=False)
    x = torch.randn(2, 72)
    args = (x, layer.qweight, layer.scales, layer.zeros, 4, GROUP)
    reason = dispatch.why_not(*args, None, 72)
    assert reason and "\n" not in reason
    if "triton is not importable" not in reason:  # triton present: the group is what it refuses
        assert "group=32 does not divide in_features=72" in reason and "torch reference" in reason
    assert dispatch.maybe_triton_linear(*args, None, 72) is None
    ref = reference.quant_matmul_ref(*args, 72)
    with reference_forward():  # the layer's torch path, not its CPU kernel
        assert torch.allclose(ref, layer(x), atol=1e-5)
    assert torch.equal(dispatch.quant_matmul(*args, 72), ref)
    L, R = torch.randn(24, 4), torch.randn(4, 72)
    assert dispatch.maybe_triton_qlr(*args, L, R, None, 72) is None
    assert torch.allclose(dispatch.qlr_matmul(*args, L, R, 72), ref + x @ (L @ R).T, atol=1e-4)


_INTERP = """
import torch
from harness.kernels import dispatch, reference
from harness.layers.quant import QuantLinear
torch.manual_seed(0)
x = torch.randn(1, 72)
rag = QuantLinear.from_weight(torch.randn(24, 72), bits=4, group=32, sym=False)
a = (x, rag.qweight, rag.scales, rag.zeros, 4, 32)
r = dispatch.why_not(*a, None, 72)
assert r and "does not divide in_features=72" in r, r
assert torch.equal(dispatch.quant_matmul(*a, 72), reference.quant_matmul_ref(*a, 72))
L, R = torch.randn(24, 4), torch.randn(4, 72)
assert torch.equal(dispatch.qlr_matmul(*a, L, R, 72), reference.qlr_matmul_ref(*a, L, R, 72))
ok = QuantLinear.from_weight(torch.randn(24, 64), bits=4, group=32, sym=False)
b = (torch.randn(1, 64), ok.qweight, ok.scales, ok.zeros, 4, 32)
assert dispatch.why_not(*b, None, 64) is None  # control: whole groups do run on Triton here
y = dispatch.maybe_triton_linear(*b, None, 64)
assert y is not None and torch.allclose(y, reference.quant_matmul_ref(*b, 64), atol=1e-4)
print("ok")
"""


def test_under_the_triton_interpreter_ragged_groups_use_the_reference():
    """Where the kernels can run (TRITON_INTERPRET=1, set before triton is imported, so in a
    subprocess), a ragged group is refused by reason and served by the torch reference."""
    pytest.importorskip("triton", reason="triton is not installed (the 'gpu'/'dev' extra)")
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    root = Path(__file__).resolve().parents[3]
    proc = subprocess.run([sys.executable, "-c", _INTERP], env=env, cwd=root, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]


# ---------------------------------------------------------------- every default spec
MODELS = {"llama-48": odd_llama, "gpt2-64": random_gpt2}


def _default_cases():
    return [pytest.param(name, mname, id=f"{name}-{mname}") for name in TECHNIQUES.names() for mname in MODELS]


@pytest.mark.parametrize("name,mname", _default_cases())
def test_default_spec_runs_on_small_odd_width_models(name, mname):
    cls = TECHNIQUES.get(name)
    if cls.requires_cuda:
        pytest.skip(f"{name} is CUDA-only")
    if "causal-lm" not in cls.model_kinds:
        pytest.skip(f"{name} does not apply to causal LMs")
    model = MODELS[mname]()
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if name == "tie-embeddings" and head is not None and head.weight is emb.weight:
        pytest.skip("tie-embeddings does not apply: this model's embeddings are already tied")
    if name == "gqa" and mname == "gpt2-64":
        pytest.skip("gqa does not apply to GPT-2 (no separate KV heads): a one-line error (test_gqa.py)")
    if name == "distill":
        pytest.skip("distill's default trains 100 steps; short runs on each family: tests/techniques/distillation")
    if name == "pipeline":
        pytest.skip("a pipeline has no default stages (an empty one is a one-line error); its suite spec runs on "
                    "these families in tests/techniques/test_pipeline.py")
    calib = _calib() if (cls.needs_calibration or cls.uses_calibration) else None
    res = harness.compress(model, name, calibration=calib)  # the default spec: no options
    out = _logits(res.model, ids())
    assert out.shape == (2, 16, 128) and torch.isfinite(out).all()
