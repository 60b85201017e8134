import hashlib

import pytest

from harness.models import data
from harness.registry import UnknownNameError


def test_splits_match_committed_checksums_and_are_disjoint():
    texts = {s: data.load_split(s) for s in data.SPLITS}
    for s, t in texts.items():
        assert hashlib.sha256(t.encode()).hexdigest() == data.expected_sums()[s]
    def paras(t):
        return {" ".join(p.split()) for p in t.split("\n\n") if p.strip()}

    # documents are deduplicated paragraph by paragraph before splitting: no leakage
    assert not paras(texts["validation"]) & paras(texts["train"])
    assert not paras(texts["test"]) & paras(texts["train"])
    assert len(texts["train"]) > 10 * len(texts["validation"])


def test_corrupt_split_is_detected(tmp_path, monkeypatch):
    import shutil

    for f in data.CORPUS_DIR.iterdir():
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "validation.txt").write_text("tampered\n")
    monkeypatch.setattr(data, "CORPUS_DIR", tmp_path)
    data.load_split.cache_clear()
    data.expected_sums.cache_clear()
    try:
        with pytest.raises(data.CorruptDataError, match="validation.*sha256"):
            data.load_split("validation")
    finally:
        data.load_split.cache_clear()
        data.expected_sums.cache_clear()


def test_unknown_split_suggests():
    with pytest.raises(UnknownNameError, match="did you mean 'validation'"):
        data.load_split("valdation")
