"""Bit packing: exact round trip for every width and odd shape, and the documented layout."""
from __future__ import annotations

import pytest
import torch

from harness.config import SpecError
from harness.primitives.packing import pack, packed_width, unpack


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (7, 13), (5, 17), (2, 64), (9, 100)])
def test_round_trip_identity(bits, shape):
    g = torch.Generator().manual_seed(bits * 1000 + shape[1])
    codes = torch.randint(0, 2 ** bits, shape, generator=g).to(torch.uint8)
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.shape == (shape[0], packed_width(shape[1], bits))
    assert torch.equal(unpack(packed, bits, shape[1]), codes)


@pytest.mark.parametrize("bits,in_f,width", [(4, 7, 4), (4, 8, 4), (2, 5, 2), (3, 8, 3), (3, 9, 6), (8, 5, 5)])
def test_packed_width_is_dense(bits, in_f, width):
    assert packed_width(in_f, bits) == width


def test_layout_4bit_low_nibble_first():
    codes = torch.tensor([[1, 2, 3]], dtype=torch.uint8)
    assert pack(codes, 4).tolist() == [[0x21, 0x03]]


def test_layout_2bit_little_endian():
    codes = torch.tensor([[1, 2, 3, 0, 3]], dtype=torch.uint8)
    assert pack(codes, 2).tolist() == [[1 | 2 << 2 | 3 << 4, 3]]


def test_layout_3bit_bit_stream():
    codes = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 0]], dtype=torch.uint8)
    word = sum(c << (3 * i) for i, c in enumerate([1, 2, 3, 4, 5, 6, 7, 0]))
    assert pack(codes, 3).tolist() == [[word & 0xFF, (word >> 8) & 0xFF, (word >> 16) & 0xFF]]


def test_bad_input():
    with pytest.raises(SpecError, match="bits=5"):
        pack(torch.zeros(2, 2, dtype=torch.uint8), 5)
    with pytest.raises(SpecError, match="does not fit"):
        pack(torch.full((2, 2), 4, dtype=torch.uint8), 2)
    with pytest.raises(SpecError, match="packed width"):
        unpack(torch.zeros(2, 3, dtype=torch.uint8), 4, 9)
