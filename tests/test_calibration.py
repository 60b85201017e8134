import pytest
import torch
from conftest import FAMILIES

from harness.calibration import (
    Calibration,
    block_linears,
    collect_linear_stats,
    find_blocks,
    for_each_block,
    get_calibration,
    target_linears,
)
from harness.config import SpecError


def _calib(n=4, seq=16, vocab=128):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (n, seq), generator=g)
    return Calibration(x, torch.ones_like(x))


def test_calibration_is_seeded_and_from_train(tiny_lm):
    a = get_calibration(tiny_lm.tokenizer, n=4, seq_len=32, seed=3)
    b = get_calibration(tiny_lm.tokenizer, n=4, seq_len=32, seed=3)
    c = get_calibration(tiny_lm.tokenizer, n=4, seq_len=32, seed=4)
    assert torch.equal(a.input_ids, b.input_ids) and not torch.equal(a.input_ids, c.input_ids)
    assert a.describe() == {"calibration_split": "train", "calibration_n": 4, "calibration_seq_len": 32,
                            "calibration_seed": 3}
    with pytest.raises(SpecError, match="n=0"):
        get_calibration(tiny_lm.tokenizer, n=0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_block_by_block_replay_matches_full_forward(family):
    """Feeding each block the previous block's outputs reproduces the model's own
    hidden states; the Hessian hook sees exactly the tokens of the calibration set."""
    model = FAMILIES[family]()
    calib = _calib()
    _, blocks = find_blocks(model)
    with torch.no_grad():
        model(input_ids=calib.input_ids, output_hidden_states=True)
    seen = []

    def fn(i, block, feed):
        lin = block_linears(block)
        stats = collect_linear_stats(lin, feed)
        first = next(iter(stats.values()))
        assert first.n == calib.n * calib.seq_len
        H = first.H
        assert torch.allclose(H, H.T, atol=1e-5) and torch.linalg.eigvalsh(H).min() > -1e-4
        seen.append(i)

    for_each_block(model, calib, fn)
    assert seen == list(range(len(blocks)))


def test_first_block_inputs_equal_embeddings_output():
    from conftest import random_llama

    from harness.calibration import capture_block_inputs

    model = random_llama()
    calib = _calib()
    args, kwargs = capture_block_inputs(model, calib, batch_size=4)[0]
    hidden = args[0] if args else kwargs["hidden_states"]
    assert torch.equal(hidden, model.model.embed_tokens(calib.input_ids))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_target_linears_are_the_block_linears_in_order(family):
    from harness.layers.base import is_linear

    model = FAMILIES[family]()
    prefix, blocks = find_blocks(model)
    got = target_linears(model)
    want = [f"{prefix}.{i}.{n}" for i, b in enumerate(blocks) for n, m in b.named_modules() if is_linear(m)]
    assert list(got) == want and all(got[n] is model.get_submodule(n) for n in got)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    every = [n for n, m in model.named_modules() if is_linear(m)]
    assert list(target_linears(model, scope="all", head=True)) == every
    assert list(target_linears(model, scope="all")) == [n for n in every if model.get_submodule(n) is not head]
    if head is not None and is_linear(head):
        with_head = target_linears(model, head=True)
        assert list(with_head)[:-1] == want and list(with_head.values())[-1] is head


def test_target_linears_also_takes_packed_layers():
    from conftest import random_llama

    from harness.layers.sparse import SparseLinear
    from harness.techniques import compress

    model = compress(random_llama(), "magnitude:sparsity=0.5").model
    assert target_linears(model) == {}
    packed = target_linears(model, also=(SparseLinear,))
    assert len(packed) == 14 and all(isinstance(m, SparseLinear) for m in packed.values())
