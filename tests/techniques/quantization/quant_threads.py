"""Quantization tests run single-threaded: their many small ops (GPTQ's column loop,
per-layer packing) are several times slower with 2 torch threads on a shared 2-core box.
Test modules do ``from quant_threads import one_thread  # noqa: F401`` (autouse fixture)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
