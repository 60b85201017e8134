"""QuantEmbedding: packed rows, lookups equal the dequantized table, exact byte layout."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.layers.embedding import QuantEmbedding


@pytest.mark.parametrize("bits,group,sym", [(4, 16, True), (3, 24, False), (8, None, True), (2, 32, False)])
def test_lookup_is_the_dequantized_row(bits, group, sym):
    torch.manual_seed(0)
    emb = nn.Embedding(50, 48, padding_idx=0)
    q = QuantEmbedding.from_embedding(emb, bits=bits, group=group, sym=sym)
    ids = torch.tensor([[0, 3, 49], [7, 7, 1]])
    table = q.dequantize()
    assert torch.equal(q(ids), table[ids])
    step = q.scales.float().max()
    assert (table - emb.weight).abs().max() <= step + 1e-6
    ng = 1 if group is None else -(-48 // group)
    assert q.scales.shape == (50, ng) and (q.zeros is None) == sym
    rebuilt = QuantEmbedding.from_args(q.layer_args())
    rebuilt.load_state_dict(q.state_dict())
    assert torch.equal(rebuilt(ids), q(ids)) and rebuilt.padding_idx == 0


def test_max_norm_embeddings_are_refused():
    with pytest.raises(ValueError, match="max_norm"):
        QuantEmbedding.from_embedding(nn.Embedding(4, 8, max_norm=1.0))
