"""Training data: deterministic windows of a source, a token budget, evaluation splits
refused, text files and HF dataset directories, the calibration fallback."""
from __future__ import annotations

import pytest
import torch

from harness.calibration import Calibration, get_calibration
from harness.config import SpecError
from harness.models import data
from harness.models.train_data import for_technique, training_windows


@pytest.fixture(scope="module")
def tok():
    from harness.models.zoo import _tiny_tokenizer

    return _tiny_tokenizer()


def test_windows_are_seeded_non_overlapping_chunks_of_the_train_split(tok):
    a = training_windows(tok, tokens=1000, seq_len=64, seed=3)
    b = training_windows(tok, tokens=1000, seq_len=64, seed=3)
    c = training_windows(tok, tokens=1000, seq_len=64, seed=4)
    assert torch.equal(a.input_ids, b.input_ids) and not torch.equal(a.input_ids, c.input_ids)
    assert a.n == 16 and a.tokens == 1024 and a.split == "train"  # ceil(1000 / 64) whole windows
    ids = data.split_ids(tok, "train")
    chunks = ids[: ids.numel() // 64 * 64].view(-1, 64)
    for w in a.input_ids:  # each window is one aligned chunk of the split, none repeated
        assert (chunks == w).all(1).sum() >= 1
    assert len({tuple(w.tolist()) for w in a.input_ids}) == a.n


def test_a_budget_beyond_the_source_repeats_it_in_a_new_order_and_says_so(tmp_path, tok):
    f = tmp_path / "corpus.txt"
    f.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    src = training_windows(tok, tokens=8, seq_len=8, source=str(f))
    n_src = src.source_tokens // 8
    assert src.source == str(f) and src.split == "external"
    d = training_windows(tok, tokens=3 * n_src * 8, seq_len=8, source=str(f))
    assert d.n == 3 * n_src and d.describe()["train_epochs"] == 3.0
    first = {tuple(w.tolist()) for w in d.input_ids[:n_src]}
    assert len(first) == len({tuple(w.tolist()) for w in d.input_ids})  # epoch 1 visits every window


@pytest.mark.parametrize("bad", ["validation", "test", "/no/such/file.txt"])
def test_evaluation_splits_and_missing_sources_are_refused(tok, bad):
    with pytest.raises(SpecError, match=f"data='{bad}'.*allowed: train"):
        training_windows(tok, tokens=100, source=bad)


def test_hf_dataset_directory_train_split_text_column(tmp_path, tok):
    datasets = pytest.importorskip("datasets")
    rows = ["alpha beta gamma delta " * 20, "", "epsilon zeta eta theta " * 20]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": rows}),
                          "validation": datasets.Dataset.from_dict({"text": ["never read " * 50]})}
                         ).save_to_disk(str(tmp_path / "ds"))
    d = training_windows(tok, tokens=64, seq_len=16, source=str(tmp_path / "ds"))
    text_ids = set(data.token_ids(tok, rows[0] + rows[2]).tolist())
    assert set(d.input_ids.flatten().tolist()) <= text_ids
    (tmp_path / "plain").mkdir()
    with pytest.raises(SpecError, match="not a Hugging Face dataset"):
        training_windows(tok, tokens=64, source=str(tmp_path / "plain"))


def test_for_technique_uses_the_calibration_tokenizer_else_its_windows(tok):
    calib = get_calibration(tok, n=4, seq_len=32)
    d = for_technique(calib, tokens=320, seq_len=32, seed=1)
    assert d.source == "train" and d.n == 10 and torch.equal(
        d.input_ids, training_windows(tok, tokens=320, seq_len=32, seed=1).input_ids)
    bare = Calibration(torch.arange(64).view(2, 32))
    fb = for_technique(bare, tokens=32 * 5)
    assert fb.source == "calibration windows" and fb.n == 5
    assert torch.equal(fb.input_ids[2], bare.input_ids[0])  # cycled
    with pytest.raises(SpecError, match="needs the tokenizer"):
        for_technique(bare, tokens=32, source="some.txt")


class _Framing:
    """The tiny tokenizer, framing texts as BERT's does: [7] text [8]."""

    def __init__(self, tok) -> None:
        self.tok = tok

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def __len__(self) -> int:
        return len(self.tok)

    def __call__(self, *a, **kw):
        return self.tok(*a, **kw)

    def build_inputs_with_special_tokens(self, ids):
        return [7, *ids, 8]


def test_encoder_windows_are_framed_like_the_texts_they_are_scored_on(tok):
    w = training_windows(_Framing(tok), tokens=640, seq_len=64, seed=1, special_tokens=True)
    assert w.input_ids.shape == (10, 64) and w.tokens == 640
    assert (w.input_ids[:, 0] == 7).all() and (w.input_ids[:, -1] == 8).all()
    ids = data.split_ids(tok, "train")
    chunks = ids[: ids.numel() // 62 * 62].view(-1, 62)  # the text between is one aligned 62-token chunk
    assert all((chunks == x[1:-1]).all(1).any() for x in w.input_ids)
    plain = training_windows(_Framing(tok), tokens=640, seq_len=64, seed=1)
    assert not (plain.input_ids[:, 0] == 7).all()


def test_a_calibration_from_the_users_text_trains_on_that_text(tmp_path, tok):
    """--calibration-text reaches the techniques that train: data=train then means the
    user's text, not the bundled split; an explicit other source still wins."""
    f = tmp_path / "domain.txt"
    f.write_text("the quick brown fox jumps over the lazy dog. " * 60)
    cal = get_calibration(tok, n=2, seq_len=16, text_file=str(f))
    d = for_technique(cal, tokens=256, seq_len=16)
    assert d.source == str(f) and d.split == "external"
    text_ids = set(data.token_ids(tok, f.read_text()).tolist())
    assert set(d.input_ids.flatten().tolist()) <= text_ids
    other = tmp_path / "other.txt"
    other.write_text("a completely different text about tides and moons. " * 60)
    assert for_technique(cal, tokens=256, seq_len=16, source=str(other)).source == str(other)
    assert for_technique(get_calibration(tok, n=2, seq_len=16), tokens=256, seq_len=16).source == "train"
