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


# -- hardening: saving never destroys what it did not write (issue 18) ------------------------

def test_save_into_a_directory_with_a_user_file_keeps_it(tmp_path, llama):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("precious")
    with pytest.raises(CheckpointError, match="not a harness checkpoint"):
        save_compressed(llama, target)
    assert (target / "notes.txt").read_text() == "precious" and sorted(p.name for p in target.iterdir()) == [
        "notes.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # no temporary sibling left behind


def test_save_onto_a_file_is_refused(tmp_path, llama):
    f = tmp_path / "model.bin"
    f.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="existing file"):
        save_compressed(llama, f)
    assert f.read_bytes() == b"x"


def test_save_into_the_working_directory_is_refused(tmp_path, llama, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.py").write_text("print(1)")
    with pytest.raises(CheckpointError, match="not a harness checkpoint"):
        save_compressed(llama, ".")
    assert (tmp_path / "keep.py").is_file()


def test_existing_checkpoint_needs_overwrite_and_is_replaced_whole(tmp_path, llama):
    from conftest import random_gpt2

    save_compressed(llama, tmp_path / "ck")
    with pytest.raises(CheckpointError, match="--overwrite"):
        save_compressed(random_gpt2(), tmp_path / "ck")
    assert type(load_compressed(tmp_path / "ck")).__name__ == "LlamaForCausalLM"
    save_compressed(random_gpt2(), tmp_path / "ck", overwrite=True)
    assert type(load_compressed(tmp_path / "ck")).__name__ == "GPT2LMHeadModel"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_empty_directory_is_a_valid_target(tmp_path, llama):
    (tmp_path / "empty").mkdir()
    save_compressed(llama, tmp_path / "empty")
    assert (tmp_path / "empty" / "harness.json").is_file()


def test_fresh_process_loads_a_compressed_checkpoint_with_identical_logits(tmp_path, llama):
    """load_compressed registers the layer classes itself: no prior import of techniques."""
    import subprocess
    import sys

    import harness

    res = harness.compress(llama, "rtn:bits=4,group=32")
    save_compressed(res.model, tmp_path / "q")
    x = ids()
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(res.model(input_ids=x).logits, tmp_path / "want.pt")
    code = ("import sys, torch, harness\n"
            "m = harness.load_compressed(sys.argv[1])\n"
            "with torch.no_grad():\n"
            "    got = m(input_ids=torch.load(sys.argv[2])).logits\n"
            "assert torch.equal(got, torch.load(sys.argv[3])), 'logits differ'\n"
            "print('ok', type(m.model.layers[0].mlp.up_proj).__name__)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "q"), str(tmp_path / "x.pt"),
                          str(tmp_path / "want.pt")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["ok", "QuantLinear"]


def test_every_registered_layer_is_loadable_by_name():
    import harness.techniques  # noqa: F401  registers every layer class
    from harness.layers.base import LAYER_MODULES, LAYERS

    assert set(LAYERS.names()) <= set(LAYER_MODULES), set(LAYERS.names()) - set(LAYER_MODULES)
    for name, module in LAYER_MODULES.items():
        assert LAYERS.get(name).__module__ == module
