"""SparseLinear: lossless packing, honest sizes, save -> load round trip."""
from __future__ import annotations

import pytest
import torch

from harness.config import SpecError
from harness.layers.sparse import (
    SparseLinear,
    choose_format,
    format_bytes,
    pack_bits,
    unpack_bits,
)


def _sparse_weight(out_f=24, in_f=40, density=0.5, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g).to(dtype)
    return w * (torch.rand(out_f, in_f, generator=g) < density)


@pytest.mark.parametrize("fmt", ["bitmask", "csr"])
def test_pack_is_lossless_and_forward_matches_dense(fmt):
    w = _sparse_weight()
    b = torch.randn(24)
    layer = SparseLinear.from_dense(w, b, format=fmt)
    assert layer.format == fmt
    assert torch.equal(layer.dense_weight(), w)
    assert torch.equal(layer.keep_mask(), w != 0)
    x = torch.randn(3, 40)
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, w, b))


def test_bits_roundtrip_odd_length():
    m = torch.rand(37) < 0.3
    assert torch.equal(unpack_bits(pack_bits(m), 37), m)


def test_explicit_mask_keeps_zero_values():
    w = _sparse_weight()
    keep = torch.ones_like(w, dtype=torch.bool)  # keep everything, zeros included
    layer = SparseLinear.from_dense(w, mask=keep, format="bitmask")
    assert layer.nnz == w.numel()
    assert torch.equal(layer.dense_weight(), w)


def test_stored_bytes_match_format_formula_and_auto_picks_smaller():
    w = _sparse_weight(64, 128, density=0.5, dtype=torch.float16)
    nnz = int((w != 0).sum())
    for fmt in ("bitmask", "csr"):
        layer = SparseLinear.from_dense(w, format=fmt)
        stored = sum(t.numel() * t.element_size() for t in layer.state_dict().values())
        assert stored == format_bytes(fmt, 64, 128, nnz, torch.float16)
    # 50% fp16: bitmask (8 + 1 bits/weight) beats CSR (8 + 8 bits/weight) and is <= 0.6x dense
    assert choose_format(64, 128, nnz, torch.float16) == "bitmask"
    assert format_bytes("bitmask", 64, 128, nnz, torch.float16) <= 0.6 * w.numel() * 2
    # very sparse: CSR wins
    assert choose_format(64, 128, 64 * 128 // 100, torch.float32) == "csr"


def test_bad_format_is_one_line_error():
    with pytest.raises(SpecError, match="sparse format 'coo'"):
        SparseLinear(4, 4, 2, format="coo")


@pytest.mark.parametrize("fmt", ["bitmask", "csr"])
def test_save_load_identical_logits(tmp_path, llama, fmt):
    from conftest import ids

    from harness.checkpoint import load_compressed, save_compressed
    from harness.layers.base import set_module

    lin = llama.model.layers[0].mlp.down_proj
    w = lin.weight.detach() * (torch.rand_like(lin.weight) < 0.5)
    set_module(llama, "model.layers.0.mlp.down_proj", SparseLinear.from_dense(w, format=fmt))
    x = ids()
    ref = llama(input_ids=x).logits
    back = load_compressed(save_compressed(llama, tmp_path / "m"))
    assert isinstance(back.model.layers[0].mlp.down_proj, SparseLinear)
    assert torch.equal(back(input_ids=x).logits, ref)
