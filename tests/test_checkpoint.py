import json

import pytest
import torch
from conftest import ids

from harness.checkpoint import CheckpointError, load_compressed, save_compressed


def _out(model, x):
    with torch.no_grad():
        o = model(input_ids=x)
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


def test_roundtrip_identical_outputs_every_family(family_model, tmp_path):
    name, model = family_model
    x = ids()
    save_compressed(model, tmp_path / name)
    loaded = load_compressed(tmp_path / name)
    assert type(loaded) is type(model)
    assert torch.equal(_out(model, x), _out(loaded, x))


def test_tied_embeddings_are_stored_once_and_retied(tmp_path):
    from conftest import random_gpt2

    m = random_gpt2()  # GPT-2 ties lm_head to wte
    assert m.lm_head.weight.data_ptr() == m.transformer.wte.weight.data_ptr()
    save_compressed(m, tmp_path / "g")
    loaded = load_compressed(tmp_path / "g")
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()
    from safetensors import safe_open
    with safe_open(str(tmp_path / "g" / "model.safetensors"), "pt") as f:
        assert sum(1 for k in f.keys() if k.endswith(("wte.weight", "lm_head.weight"))) == 1


def test_shrunk_linear_shapes_reload(tmp_path, llama):
    from torch import nn
    mlp = llama.model.layers[0].mlp
    keep = 96  # remove 32 of 128 intermediate neurons
    with torch.no_grad():
        g, u, d = mlp.gate_proj, mlp.up_proj, mlp.down_proj
        mlp.gate_proj = nn.Linear(64, keep, bias=False)
        mlp.gate_proj.weight.copy_(g.weight[:keep])
        mlp.up_proj = nn.Linear(64, keep, bias=False)
        mlp.up_proj.weight.copy_(u.weight[:keep])
        mlp.down_proj = nn.Linear(keep, 64, bias=False)
        mlp.down_proj.weight.copy_(d.weight[:, :keep])
    x = ids()
    save_compressed(llama, tmp_path / "s")
    loaded = load_compressed(tmp_path / "s")
    assert loaded.model.layers[0].mlp.down_proj.in_features == keep
    assert torch.equal(_out(llama, x), _out(loaded, x))


def test_failed_save_leaves_nothing_behind(tmp_path, llama, monkeypatch):

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(llama.config, "to_json_file", boom)
    with pytest.raises(OSError):
        save_compressed(llama, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage,match", [
    ("no-meta", "not a saved harness model"),
    ("bad-json", "not valid JSON"),
    ("foreign", "has format"),
    ("truncated", "cannot read"),
])
def test_corrupt_checkpoints_are_clear_errors(tmp_path, llama, damage, match):
    p = save_compressed(llama, tmp_path / "c")
    meta = p / "harness.json"
    if damage == "no-meta":
        meta.unlink()
    elif damage == "bad-json":
        meta.write_text("{")
    elif damage == "foreign":
        meta.write_text(json.dumps({"format": "other/9"}))
    else:
        data = (p / "model.safetensors").read_bytes()
        (p / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=match):
        load_compressed(p)


def test_half_precision_model_keeps_its_dtype(tmp_path, llama):
    inv_freq = llama.model.rotary_emb.inv_freq.clone()
    half = llama.half()
    # .half() also casts the rotary frequencies; from_pretrained (and our loader) keep them fp32
    half.model.rotary_emb.inv_freq = inv_freq
    save_compressed(half, tmp_path / "h")
    loaded = load_compressed(tmp_path / "h")
    assert loaded.model.layers[0].mlp.up_proj.weight.dtype == torch.float16
    x = ids()
    assert torch.equal(_out(half, x), _out(loaded, x))
