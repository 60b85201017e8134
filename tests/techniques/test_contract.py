"""The Technique contract: apply returns Applied (model, notes, cache factory), techniques
keep no state between runs, needs are declared from the frozen config, the catalogue
lists only family modules that exist, and the shared fine-tune loop restores what it
touched."""
from __future__ import annotations

import copy
import sys

import pytest
import torch
from conftest import ids, random_llama

import harness.techniques as catalogue
from harness.calibration import Calibration
from harness.techniques import TECHNIQUES, Applied, Technique, compress, from_config, make, spec
from harness.techniques.finetune import cycled_windows, train


def _calib() -> Calibration:
    x = ids(4, 32)
    return Calibration(x, torch.ones_like(x))


def _cpu_specs() -> list[str]:
    return [cls.suite_specs[0] for _, cls in TECHNIQUES.items() if cls.suite_specs and not cls.requires_cuda]


@pytest.mark.parametrize("spec", _cpu_specs())
def test_a_technique_instance_is_stateless(spec):
    tech = make(spec)
    if "causal-lm" not in tech.model_kinds:
        pytest.skip("causal-lm only")
    before = dict(vars(tech))
    model = random_llama()
    first = compress(copy.deepcopy(model), tech, calibration=_calib())
    second = compress(copy.deepcopy(model), tech, calibration=_calib())
    assert vars(tech) == before  # nothing set while running
    assert first.notes == second.notes and isinstance(first.notes, list)
    assert type(tech).apply is not Technique.apply


def test_needs_are_declared_from_the_config():
    svd = TECHNIQUES.get("svd")
    assert svd.needs_calibration is False and svd.needs_grad is False  # class: the default config
    assert make("svd:alloc=sensitivity").needs_calibration is True
    assert make("svd:update_steps=2").needs_grad is True
    assert TECHNIQUES.get("share-layers").needs_calibration is False
    assert make("share-layers:steps=2").needs_calibration is True
    assert make("wanda:sparsity=0.5,format=dense").storage == "mask"
    assert TECHNIQUES.get("wanda").storage == "packed"
    for _, cls in TECHNIQUES.items():  # plain values on every class (what `harness techniques` lists)
        for attr in ("needs_calibration", "uses_calibration", "needs_grad", "requires_cuda"):
            assert isinstance(getattr(cls, attr), bool), (cls.name, attr)
        assert isinstance(cls.storage, str)


def test_from_config_reads_the_instance_config():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Cfg:
        steps: int = 0

    class T(Technique):
        name = "t-contract"
        config_cls = Cfg
        needs_calibration = from_config(lambda c: c.steps > 0)

    assert T.needs_calibration is False and T(Cfg(3)).needs_calibration is True


def test_a_bare_module_from_apply_means_no_notes():
    class Bare(Technique):
        name = "t-bare"

        def apply(self, model, calibration=None):
            return model

    res = compress(random_llama(), Bare())
    assert res.notes == [] and res.cache_factory is None and not res.model.training


def test_kv_cache_returns_its_cache_factory():
    from harness.techniques.quantization.kv_cache import QuantizedKVCache

    res = compress(random_llama(), "kv-cache:bits=4")
    assert isinstance(res.cache_factory(), QuantizedKVCache)
    assert not hasattr(res.model, "harness_cache_factory")  # no side channel on the model
    assert compress(random_llama(), "rtn:bits=4").cache_factory is None


def test_apply_returns_applied():
    res = make("rtn:bits=8").apply(random_llama())
    assert isinstance(res, Applied) and res.notes


def test_every_listed_family_exists_and_a_missing_one_is_an_error(tmp_path, monkeypatch):
    import importlib.util

    assert all(importlib.util.find_spec(m) for m in spec.FAMILIES)
    assert catalogue.IMPORT_ERRORS == {}
    with pytest.raises(ModuleNotFoundError):
        spec.import_families(["harness.techniques.no_such_family"])
    (tmp_path / "optional_family_mod.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    errors = spec.import_families(["optional_family_mod"])
    assert "no_such_dependency_xyz" in errors["optional_family_mod"]
    sys.modules.pop("optional_family_mod", None)


def test_train_restores_grad_flags_and_mode():
    model = random_llama()
    head = model.lm_head.weight
    head.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    w0 = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    params = [model.model.layers[0].mlp.up_proj.weight]

    def loss(x):
        return model(input_ids=x, labels=x, use_cache=False).loss

    losses = train(model, params, cycled_windows(_calib(), 2), loss, steps=3, lr=1e-2)
    assert len(losses) == 3 and all(isinstance(v, float) for v in losses)
    assert not model.training
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, w0)
    assert torch.equal(model.model.layers[1].mlp.up_proj.weight, random_llama().model.layers[1].mlp.up_proj.weight)
    assert train(model, params, cycled_windows(_calib(), 2), loss, steps=0, lr=1e-2) == []
