"""Stacking rules and change detection: the role of each technique, and a layer changed by
swapping ``.data`` (torch.nn.utils.prune) counts as changed."""
from __future__ import annotations

import torch
from conftest import random_llama

from harness.techniques import make
from harness.techniques.stacking import roles, snapshot, unchanged


def test_roles_of_the_catalogue():
    assert roles(make("gptq:bits=4")) == {"quant"}
    assert roles(make("qat:bits=4")) == {"quant", "trains"}
    assert roles(make("magnitude:format=dense")) == {"sparse"}
    assert roles(make("taylor")) == {"sparse"}  # gradients for importance, no training
    assert roles(make("svd")) == {"lowrank"}
    assert roles(make("caldera")) == {"quant", "lowrank"}
    assert roles(make("prune-neurons")) == {"structural"}
    assert roles(make("distill:layers=2")) == {"structural", "trains"}
    assert roles(make("kv-cache")) == {"runtime"} and roles(make("quant-embed")) == {"embed"}


def test_a_data_swap_or_in_place_edit_is_a_change():
    m = random_llama()
    before = snapshot(m)
    up = m.model.layers[0].mlp.up_proj
    down = m.model.layers[0].mlp.down_proj
    up.weight.data = up.weight.data.clone()  # what torch.nn.utils.prune.remove does
    with torch.no_grad():
        down.weight.mul_(1.0)
    assert not unchanged(before["model.layers.0.mlp.up_proj"], up)
    assert not unchanged(before["model.layers.0.mlp.down_proj"], down)
    assert unchanged(before["model.layers.1.mlp.up_proj"], m.model.layers[1].mlp.up_proj)
