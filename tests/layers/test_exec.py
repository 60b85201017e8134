"""CPU kernel choice (harness.layers.exec): each packed format's path, its error against the
torch reference, and that kernel layouts never touch the stored state.

Tolerance: the kernels take bf16 activations and bf16 scales/zeros and return a bf16 result,
so each output carries a few bf16 roundings (2**-8 relative each). Per layer we allow 2% of
the output's max magnitude; measured errors are 0.3-0.5% (docs/results/cpu-kernels.md).
"""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import ids, random_llama

from harness.checkpoint import load_compressed, save_compressed
from harness.kernels import cpu
from harness.layers.base import set_module
from harness.layers.dynamic import DynamicInt8Linear
from harness.layers.exec import ENV, kernel_summary, reference_forward
from harness.layers.lowrank import LowRankLinear
from harness.layers.qlr import QLRLinear
from harness.layers.quant import CodebookLinear, QuantLinear, W8A8Linear
from harness.layers.sparse import SparseLinear
from harness.measure.memory import model_resident_mb
from harness.measure.size import measure_size

pytestmark = pytest.mark.usefixtures("one_thread")

BF16_TOL = 0.02  # of max |y|: a few bf16 roundings (2**-8) of activations, scales and output
IN, OUT = 256, 64


def _lin(seed=0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(IN, OUT)


def _codebook() -> CodebookLinear:
    torch.manual_seed(1)
    cb = torch.sort(torch.randn(16)).values
    return CodebookLinear.from_codes(torch.randint(0, 16, (OUT, IN)), cb, torch.rand(OUT, IN // 64) * 0.1, 4, 64,
                                     torch.randn(OUT))


def _sparse() -> SparseLinear:
    w = _lin().weight.detach().clone()
    w[w.abs() < w.abs().median()] = 0
    return SparseLinear.from_dense(w, torch.randn(OUT))


def _qlr() -> QLRLinear:
    lin = _lin()
    return QLRLinear.from_float(lin.weight.detach(), torch.randn(OUT, 8) * 0.02, torch.randn(8, IN) * 0.02, lin.bias,
                                q_bits=2, q_group=64)


FORMATS = {
    "int4-g128-sym": (lambda: QuantLinear.from_linear(_lin(), bits=4, group=128, sym=True), "int4pack-bf16"),
    "int4-g32-asym": (lambda: QuantLinear.from_linear(_lin(), bits=4, group=32, sym=False), "int4pack-bf16"),
    "int4-g256-asym": (lambda: QuantLinear.from_linear(_lin(), bits=4, group=256, sym=False), "int4pack-bf16"),
    "int4-per-channel": (lambda: QuantLinear.from_linear(_lin(), bits=4, group=None), "int4pack-bf16"),
    "int3-g64-asym": (lambda: QuantLinear.from_linear(_lin(), bits=3, group=64, sym=False), "int4pack-bf16"),
    "int2-g64-sym": (lambda: QuantLinear.from_linear(_lin(), bits=2, group=64), "int4pack-bf16"),
    "awq-input-scale": (lambda: QuantLinear.from_weight(_lin().weight.detach() * 2, bits=4, group=128,
                                                        input_scale=torch.full((IN,), 2.0)), "int4pack-bf16"),
    "int8-per-channel-sym": (lambda: QuantLinear.from_linear(_lin(), bits=8, group=None), "int8pack-bf16"),
    "int8-per-channel-asym": (lambda: QuantLinear.from_linear(_lin(), bits=8, group=None, sym=False),
                              "int8pack-bf16"),
    "int8-g128": (lambda: QuantLinear.from_linear(_lin(), bits=8, group=128), "dense-bf16 cache"),
    "int4-ragged": (lambda: QuantLinear.from_linear(_lin(), bits=4, group=96), "dense-bf16 cache"),
    "w8a8": (lambda: W8A8Linear.from_weight(_lin().weight, _lin().bias, smooth=torch.rand(IN) + 0.5),
             "int8pack-bf16 (int8 activations)"),
    "nf4-like-codebook": (_codebook, "int8pack-bf16 (int8 re-quantized cache)"),
    "caldera-qlr": (_qlr, "int4pack-bf16 + low-rank bf16"),
    "caldera-qlr-asym": (lambda: QLRLinear.from_float(_lin().weight.detach() + 0.05, torch.randn(OUT, 8) * 0.02,
                                                      torch.randn(8, IN) * 0.02, _lin().bias, q_bits=2, q_group=64,
                                                      q_sym=False), "int4pack-bf16 + low-rank bf16"),
    "sparse-50": (_sparse, "dense cache (storage savings only)"),
}


@pytest.mark.parametrize("name", FORMATS)
def test_kernel_matches_reference_within_bf16_tolerance(name):
    make, kernel = FORMATS[name]
    layer = make()
    x = torch.randn(2, 3, IN)
    with torch.no_grad():
        y = layer(x)
        with reference_forward():
            ref = layer(x)
    assert layer.kernel_info()["kernel"] == kernel
    assert y.shape == ref.shape and y.dtype == x.dtype
    err = ((y - ref).abs().max() / ref.abs().max()).item()
    assert err <= BF16_TOL, f"{name}: max error {err:.4f} of max |y|"
    if "sparse" not in name:  # sparse keeps its dtype: exact; the others run in bf16
        assert err > 0


FROM_LINEAR = {
    "int4-g128-sym": lambda m: QuantLinear.from_linear(m, bits=4, group=128),
    "int8-per-channel-asym": lambda m: QuantLinear.from_linear(m, bits=8, group=None, sym=False),
    "caldera-qlr": lambda m: QLRLinear.from_float(m.weight.detach(), torch.randn(m.out_features, 4) * 0.01,
                                                  torch.randn(4, m.in_features) * 0.01, q_bits=2, q_group=64),
    "sparse-50": lambda m: SparseLinear.from_dense(m.weight.detach() * (m.weight.detach().abs() > 0.02)),
    "w8a8": lambda m: W8A8Linear.from_weight(m.weight.detach()),
}


@pytest.mark.parametrize("name", FROM_LINEAR)
def test_layouts_are_not_stored_and_round_trip_identically(name, tmp_path):
    model = random_llama(hidden=256, inter=256)
    for path, mod in list(model.named_modules()):
        if isinstance(mod, torch.nn.Linear) and ".layers." in path:
            set_module(model, path, FROM_LINEAR[name](mod))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    size = measure_size(model)
    x = ids()
    with torch.no_grad():
        y = model(x).logits
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert [(r.metric, r.value) for r in measure_size(model)] == [(r.metric, r.value) for r in size]
    layer = model.model.layers[0].mlp.down_proj
    assert layer.kernel_info()["kernel"] == FORMATS[name][1] and layer.kernel_info()["cache_bytes"] > 0
    save_compressed(model, tmp_path / "ck")
    loaded = load_compressed(tmp_path / "ck")
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, y)
    assert loaded.model.layers[0].mlp.down_proj.kernel_info()["kernel"] == FORMATS[name][1]


def test_cache_is_counted_in_resident_memory_and_int4_layout_is_half_a_byte_per_weight():
    layer = QuantLinear.from_linear(_lin(), bits=4, group=128)
    before = model_resident_mb(layer).extra["bytes"]
    info = layer.kernel_info()
    n_groups = IN // 128
    assert info["cache_bytes"] == OUT * IN // 2 + OUT * n_groups * 2 * 2 + 8  # codes, bf16 scale+zero, group id
    assert model_resident_mb(layer).extra["bytes"] == before + info["cache_bytes"]


def test_opt_out_keeps_the_reference(monkeypatch):
    layer = QuantLinear.from_linear(_lin(), bits=4, group=128)
    x = torch.randn(2, IN)
    with torch.no_grad():
        y_kernel = layer(x)
        monkeypatch.setenv(ENV, "0")
        info = layer.kernel_info()
        assert info["kernel"].startswith("torch reference") and ENV in info["why_not"]["cpu kernels"]
        assert info["cache_bytes"] == 0 and not [n for n, _ in layer.named_buffers() if n.startswith("_kc_")]
        y_ref = layer(x)
        monkeypatch.delenv(ENV)
        layer.use_kernel = False
        assert torch.equal(layer(x), y_ref) and not torch.equal(y_ref, y_kernel)
        assert "use_kernel=False" in layer.kernel_info()["why_not"]["cpu kernels"]


def test_stored_buffer_change_remakes_the_layout():
    layer = QuantLinear.from_linear(_lin(0), bits=4, group=128)
    other = QuantLinear.from_linear(_lin(7), bits=4, group=128)
    x = torch.randn(2, IN)
    with torch.no_grad():
        layer(x)
        layer.load_state_dict(other.state_dict())
        torch.testing.assert_close(layer(x), other(x))


def test_to_drops_the_layout_and_grad_uses_the_reference():
    layer = QuantLinear.from_linear(_lin(), bits=4, group=128)
    layer.kernel_info()
    assert any(n.startswith("_kc_") for n, _ in layer.named_buffers())
    layer.to(torch.float32)  # any _apply: layouts are remade on the next forward
    assert not any(n.startswith("_kc_") for n, _ in layer.named_buffers())
    x = torch.randn(2, IN, requires_grad=True)
    y = layer(x)
    y.sum().backward()  # the kernels have no autograd: the reference ran
    with reference_forward(), torch.no_grad():
        torch.testing.assert_close(y.detach(), layer(x))


def test_refusals_say_why():
    assert "multiple of 16" in cpu.int4pack_why_not(24, 256, 4, 128)
    assert "ragged" in cpu.int4pack_why_not(64, 72, 4, 32)
    assert "4-bit kernel" in cpu.int4pack_why_not(64, 256, 8, 128)
    assert cpu.int4pack_why_not(64, 256, 4, None) is None and cpu.int4_group(256, None) == 256
    assert "multiple of 32" in cpu.int8pack_why_not(64, 72)
    assert "one scale per output channel" in FORMATS["int8-g128"][0]().kernel_info()["why_not"]["int8pack-bf16"]


def test_kernel_summary_counts_paths_and_reasons():
    model = torch.nn.Sequential(QuantLinear.from_linear(_lin(), bits=4, group=128),
                                QuantLinear.from_linear(_lin(), bits=4, group=128),
                                QuantLinear.from_linear(torch.nn.Linear(IN, 24), bits=4, group=128),
                                LowRankLinear.from_factors(torch.randn(4, IN), torch.randn(OUT, 4)),
                                DynamicInt8Linear.from_linear(torch.nn.Linear(IN, OUT)),
                                torch.nn.Linear(OUT, 8))
    s = kernel_summary(copy.deepcopy(model))
    assert s["kernel"].split(", ")[0] == "int4pack-bf16 x2"
    assert "dense-bf16 cache x1" in s["kernel"] and "torch F.linear float32 x1" in s["kernel"]
    assert "fbgemm dynamic int8" in s["kernel"] and "low-rank" in s["kernel"]
    assert s["why_not"] == {"int4pack-bf16": "out_features=24 is not a multiple of 16 [1 layer]"}
    assert s["cache_bytes"] > 0
