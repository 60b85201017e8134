"""Parameter sharing: shared tensors stored once (bytes drop by exactly the shared
fraction), re-tied on load with identical logits; k-means clustering into packed
indices (a CodebookLinear; checkpoints of the retired clustered_linear still load); tied
embeddings; one-line errors for impossible configs."""
from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES, ids, random_bert, random_gpt2, random_llama

from harness.calibration import Calibration
from harness.checkpoint import load_compressed, save_compressed
from harness.config import SpecError
from harness.layers.quant import CodebookLinear
from harness.measure.size import serialized_bytes
from harness.techniques import compress
from harness.techniques.sharing import cluster_weights

pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: one torch thread is faster


def _block_bytes(model) -> int:
    from harness.calibration import find_blocks

    _, blocks = find_blocks(model)
    return sum(p.numel() * p.element_size() for p in blocks[0].parameters())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_shared_blocks_are_one_storage_in_the_file(family, tmp_path):
    from safetensors import safe_open

    model = FAMILIES[family]()
    before = serialized_bytes(model)
    per_block = _block_bytes(model)
    res = compress(model, "share-layers:group=2", kind="encoder" if family == "bert" else "causal-lm")
    after = serialized_bytes(res.model)
    # exactly one block's parameters disappear from the file (header bytes aside)
    assert abs((before - after) - per_block) < 0.02 * per_block
    save_compressed(res.model, tmp_path / "m")
    with safe_open(str(tmp_path / "m" / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert not any(".1." in k and k.split(".1.")[0].endswith(("layers", "h", "layer")) for k in keys)
    back = load_compressed(tmp_path / "m")
    from harness.calibration import find_blocks

    _, blocks = find_blocks(back)
    p0, p1 = dict(blocks[0].named_parameters()), dict(blocks[1].named_parameters())
    assert p0.keys() == p1.keys() and all(p0[k] is p1[k] for k in p0)
    x = ids()
    with torch.no_grad():
        assert torch.equal(res.model(input_ids=x)[0], back(input_ids=x)[0])


def test_shared_weights_start_at_the_group_mean():
    model = random_llama()
    w0 = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    w1 = model.model.layers[1].mlp.up_proj.weight.detach().clone()
    res = compress(model, "share-layers:group=2")
    torch.testing.assert_close(res.model.model.layers[1].mlp.up_proj.weight, (w0 + w1) / 2)


def test_fine_tune_keeps_weights_shared_and_lowers_loss():
    model = random_llama()
    calib = Calibration(ids(8, 32))
    res = compress(model, "share-layers:group=2,steps=10,lr=0.003", calib)
    layers = res.model.model.layers
    assert layers[0].self_attn.q_proj.weight is layers[1].self_attn.q_proj.weight
    first, last = [float(v) for v in next(n for n in res.notes if "fine-tuned" in n).split("loss ")[1].split(" -> ")]
    assert last < first


def test_group_not_dividing_layers_is_a_one_line_error():
    with pytest.raises(SpecError, match="group=3 does not divide the 2 layers") as e:
        compress(random_llama(), "share-layers:group=3")
    assert "\n" not in str(e.value)
    with pytest.raises(SpecError, match="group=1"):
        compress(random_llama(), "share-layers:group=1")


def test_kmeans_beats_a_uniform_grid_with_the_same_levels():
    torch.manual_seed(0)
    w = torch.randn(64, 64)
    c, idx = cluster_weights(w, 16)
    km = (c[idx] - w).pow(2).mean()
    grid = torch.linspace(w.min().item(), w.max().item(), 16)
    uni = (grid[(w[..., None] - grid).abs().argmin(-1)] - w).pow(2).mean()
    assert km < 0.7 * uni
    assert torch.equal(c, c.half().float())  # stored exactly in float16


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_cluster_packs_indices_and_round_trips(family, tmp_path):
    model = FAMILIES[family]()
    res = compress(model, "cluster:clusters=16", kind="encoder" if family == "bert" else "causal-lm")
    layers = [m for m in res.model.modules() if isinstance(m, CodebookLinear)]
    assert layers and res.storage == "packed"
    for m in layers:
        assert m.qweight.dtype == torch.uint8 and m.qweight.numel() == m.logical_params() // 2  # 4-bit
        assert m.scales is None and m.codebook.numel() == 16
        assert m.dequantize().unique().numel() <= 16
    save_compressed(res.model, tmp_path / "m")
    back = load_compressed(tmp_path / "m")
    x = ids()
    with torch.no_grad():
        assert torch.equal(res.model(input_ids=x)[0], back(input_ids=x)[0])


def test_cluster_keeps_a_codebook_of_exactly_the_requested_size(tmp_path):
    res = compress(random_llama(), "cluster:clusters=10")
    layers = [m for m in res.model.modules() if isinstance(m, CodebookLinear)]
    assert layers and all(m.bits == 4 and m.codebook.numel() == 10 for m in layers)
    save_compressed(res.model, tmp_path / "m")
    back = load_compressed(tmp_path / "m")
    x = ids()
    with torch.no_grad():
        assert torch.equal(res.model(input_ids=x)[0], back(input_ids=x)[0])


def _as_clustered_linear_checkpoint(path) -> int:
    """Rewrite a cluster checkpoint into the pre-issue-12 format: layer ``clustered_linear``
    with args (in/out features, clusters, bias) and the index tensor named ``indices``."""
    import json

    from safetensors.torch import load_file, save_file

    meta = json.loads((path / "harness.json").read_text())
    n = 0
    for spec in meta["layers"].values():
        a = spec["args"]
        spec["layer"] = "clustered_linear"
        spec["args"] = {"in_features": a["in_features"], "out_features": a["out_features"],
                        "clusters": a.get("entries", 2 ** a["bits"]), "bias": a["bias"],
                        "bias_dtype": a["bias_dtype"]}
        n += 1
    (path / "harness.json").write_text(json.dumps(meta))
    state = load_file(str(path / "model.safetensors"))
    save_file({k.removesuffix(".qweight") + ".indices" if k.endswith(".qweight") else k: v
               for k, v in state.items()}, str(path / "model.safetensors"))
    return n


@pytest.mark.parametrize("clusters", [16, 10])
def test_checkpoints_saved_as_clustered_linear_still_load(clusters, tmp_path):
    res = compress(random_llama(), f"cluster:clusters={clusters}")
    save_compressed(res.model, tmp_path / "m")
    assert _as_clustered_linear_checkpoint(tmp_path / "m") == 14
    back = load_compressed(tmp_path / "m")
    layers = [m for m in back.modules() if isinstance(m, CodebookLinear)]
    assert len(layers) == 14 and all(m.codebook.numel() == clusters for m in layers)
    x = ids()
    with torch.no_grad():
        assert torch.equal(res.model(input_ids=x)[0], back(input_ids=x)[0])


@pytest.mark.parametrize("clusters", [1, 300])
def test_bad_cluster_count(clusters):
    with pytest.raises(SpecError, match=f"clusters={clusters}"):
        compress(random_llama(), f"cluster:clusters={clusters}")


def test_tie_embeddings_stores_the_matrix_once(tmp_path):
    model = random_llama()  # untied
    emb = model.get_input_embeddings().weight
    before = serialized_bytes(model)
    res = compress(model, "tie-embeddings")
    assert res.model.lm_head.weight is res.model.get_input_embeddings().weight
    assert abs((before - serialized_bytes(res.model)) - emb.numel() * emb.element_size()) < 0.02 * emb.numel() * 4
    save_compressed(res.model, tmp_path / "m")
    back = load_compressed(tmp_path / "m")
    assert back.lm_head.weight is back.get_input_embeddings().weight
    x = ids()
    with torch.no_grad():
        assert torch.equal(res.model(input_ids=x).logits, back(input_ids=x).logits)


def test_tie_embeddings_bad_models():
    with pytest.raises(SpecError, match="already tied"):
        compress(random_gpt2(), "tie-embeddings")
    from harness.techniques import make

    with pytest.raises(SpecError, match="has none"):
        make("tie-embeddings").apply(random_bert())
