import pytest
import torch
from torch import nn

from harness.measure.size import measure_size, serialized_bytes, stored_params, weight_storage


class Two(nn.Module):
    def __init__(self, shared: bool = False, dtype=torch.float32):
        super().__init__()
        self.a = nn.Linear(64, 32, bias=False, dtype=dtype)
        self.b = self.a if shared else nn.Linear(64, 32, bias=False, dtype=dtype)


def _header_len(path) -> int:
    with open(path, "rb") as f:
        return 8 + int.from_bytes(f.read(8), "little")


def test_bytes_are_the_real_safetensors_file(tmp_path):
    from safetensors.torch import save_model

    m = Two()
    save_model(m, str(tmp_path / "m.safetensors"))
    data = 2 * 64 * 32 * 4
    assert serialized_bytes(m) == (tmp_path / "m.safetensors").stat().st_size
    assert serialized_bytes(m) == _header_len(tmp_path / "m.safetensors") + data


@pytest.mark.parametrize("dtype,bits", [(torch.float32, 32), (torch.float16, 16), (torch.bfloat16, 16)])
def test_bits_per_param_of_dense_linears(dtype, bits):
    recs = {r.metric: r.value for r in measure_size(Two(dtype=dtype))}
    assert recs["size.bits_per_param"] == bits
    assert recs["size.params"] == 2 * 64 * 32


def test_shared_weights_are_counted_once():
    shared, separate = Two(shared=True), Two()
    assert serialized_bytes(shared) < serialized_bytes(separate) - 64 * 32 * 4 + 200
    assert stored_params(shared) == 64 * 32
    bits, logical = weight_storage(shared)
    assert bits == 64 * 32 * 32 and logical == 64 * 32


def test_compression_ratio_against_reference():
    ref = serialized_bytes(Two())
    recs = {r.metric: r.value for r in measure_size(Two(dtype=torch.float16), reference_bytes=ref)}
    assert recs["size.compression_ratio"] == pytest.approx(2.0, rel=0.02)


def test_zeroed_weights_are_not_a_saving():
    m = Two()
    with torch.no_grad():
        m.a.weight[:, ::2] = 0  # a 50% "mask" on a dense tensor
    assert {r.metric: r.value for r in measure_size(m)}["size.bits_per_param"] == 32


def test_uncompressed_output_head_is_outside_bits_per_param(llama):
    import harness

    res = harness.compress(llama, "rtn:bits=4,group=32")
    bits = {r.metric: r.value for r in measure_size(res.model)}["size.bits_per_param"]
    assert 4 < bits <= 4 + 16 / 32 + 0.01  # codes + one fp16 scale per 32 weights; fp32 lm_head excluded


def test_linear_params_counts_every_dense_linear_weight_per_layer():
    from harness.measure.size import linear_params

    class WithHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = Two()
            self.body.b.weight = self.body.a.weight  # one tensor, two layers: multiplied twice per token
            self.head = nn.Linear(32, 10)  # bias not counted
            self.norm = nn.LayerNorm(32)

    assert linear_params(WithHead()) == 2 * 64 * 32 + 32 * 10
    assert linear_params(Two(shared=True)) == 64 * 32  # one module under two names: one layer
    assert linear_params(nn.Sequential(nn.LayerNorm(4))) == 0


def test_layer_bits_of_named_layers_counts_shared_weights_again(llama):
    import harness
    from harness.measure.size import layer_bits

    assert layer_bits(Two(shared=True), ["a", "b"]) == (32.0, 1.0)
    assert layer_bits(Two(dtype=torch.float16), ["a"]) == (16.0, 1.0)
    res = harness.compress(llama, "rtn:bits=4,group=32")
    names = [n for n, m in res.model.named_modules() if type(m).__name__ == "QuantLinear"]
    bits, kept = layer_bits(res.model, names)
    assert bits == pytest.approx(4 + 16 / 32) and kept == pytest.approx(1.0, abs=0.1)
