"""Search-space files (harness/search/space.py)."""
from __future__ import annotations

import random

import pytest

from harness.search.space import DEFAULT_SPACE, Param, load_space
from harness.techniques.base import TECHNIQUES
from harness.techniques.spec import load_all, make

load_all()
HAS_PIPELINE = "pipeline" in TECHNIQUES


class FakeTrial:
    """Enough of optuna's Trial for ``Space.suggest``: random choices, recorded params."""

    def __init__(self, seed: int = 0) -> None:
        self.rng, self.params = random.Random(seed), {}

    def suggest_categorical(self, name, choices):
        self.params[name] = self.rng.choice(list(choices))
        return self.params[name]

    def suggest_int(self, name, low, high, step=1, log=False):
        self.params[name] = self.rng.randrange(low, high + 1, step)
        return self.params[name]

    def suggest_float(self, name, low, high, step=None, log=False):
        v = self.rng.uniform(low, high)
        self.params[name] = low + round((v - low) / step) * step if step else v
        return self.params[name]


def _space(tmp_path, text):
    f = tmp_path / "space.yaml"
    f.write_text(text)
    return f


def test_default_space_loads_and_every_suggestion_is_a_valid_spec():
    space = load_space()
    assert space.source == str(DEFAULT_SPACE)
    names = {e.name for e in space.entries}
    assert {"gptq", "rtn", "prune-neurons"} <= names
    assert any(e.pipeline for e in space.entries) == HAS_PIPELINE
    if not HAS_PIPELINE:
        assert any("no 'pipeline' technique" in n for n in space.notes)
    for seed in range(40):
        spec = space.suggest(FakeTrial(seed))
        make(spec)  # raises on anything the technique would refuse


def test_families_fill_templates_with_fixed_values_choices_and_ranges(tmp_path):
    space = load_space(_space(tmp_path, "techniques:\n  gptq: {bits: [3, 4], group: 64}\n"
                                        "  prune-neurons: {fraction: {low: 0.1, high: 0.5, step: 0.1}}\n"))
    gptq, prune = space.entries
    assert gptq.template == "gptq:bits={bits},group=64"
    assert gptq.spec({"bits": 3}) == "gptq:bits=3,group=64"
    assert prune.corner_specs() == ["prune-neurons:fraction=0.1", "prune-neurons:fraction=0.5"]
    t = FakeTrial(1)
    spec = prune.suggest(t)
    assert spec.startswith("prune-neurons:fraction=0.") and "prune-neurons.fraction" in t.params


@pytest.mark.parametrize("text,match", [
    ("techniques: [rtn]\n", "mappings"),
    ("technique:\n  rtn: {}\n", "unknown key 'technique'"),
    ("techniques:\n  rnt: {bits: [4]}\n", "did you mean 'rtn'"),
    ("techniques:\n  rtn: {bitz: [4]}\n", "unknown option 'bitz'"),
    ("techniques:\n  rtn: {bits: [4, 9]}\n", "rtn"),
    ("techniques:\n  rtn: {bits: []}\n", "non-empty list"),
    ("techniques:\n  prune-neurons: {fraction: {low: 0.5, high: 0.1}}\n", "below high"),
    ("techniques:\n  prune-neurons: {fraction: {lo: 0.1, high: 0.5}}\n", "unknown range key 'lo'"),
    ("techniques: {rtn: {bits: [4]\n", "not valid YAML"),
    ("pipelines:\n  p: {template: 'rtn:bits={bits}', options: {group: [64]}}\n", "differ"),
    ("pipelines:\n  p: {options: {}}\n", "needs template"),
    ("techniques: {}\n", "no technique or pipeline"),
])
def test_malformed_spaces_are_one_line_errors_naming_the_file(tmp_path, text, match):
    with pytest.raises(ValueError, match=match) as e:
        load_space(_space(tmp_path, text))
    assert "\n" not in str(e.value) and "space.yaml" in str(e.value)


def test_missing_space_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_space(tmp_path / "nope.yaml")


def test_param_validation():
    with pytest.raises(ValueError, match="log range"):
        Param("x", None, 0, 1, log=True)
    assert Param("x", None, 1, 8, 1).integer and not Param("x", None, 0.1, 0.5).integer


@pytest.mark.skipif(not HAS_PIPELINE, reason="pipelines (helper P's 'pipeline' technique) are not in this build yet")
def test_pipeline_templates_are_validated_through_make(tmp_path):
    space = load_space(_space(tmp_path, "pipelines:\n  pg:\n    template: 'prune-neurons:fraction={f} + "
                                        "gptq:bits={b},group=64'\n    options: {f: [0.125, 0.25], b: [3, 4]}\n"))
    (e,) = space.entries
    assert e.pipeline and e.spec({"f": 0.25, "b": 4}) == "prune-neurons:fraction=0.25 + gptq:bits=4,group=64"
    with pytest.raises(ValueError, match="pipeline 'pg'"):
        load_space(_space(tmp_path, "pipelines:\n  pg:\n    template: 'prune-neurons:fraction={f} + gptq:bitz=4'\n"
                                    "    options: {f: [0.25]}\n"))


def test_pipelines_are_left_out_with_a_note_without_the_pipeline_technique(tmp_path, monkeypatch):
    monkeypatch.setattr(TECHNIQUES, "_items", {k: v for k, v in TECHNIQUES._items.items() if k != "pipeline"})
    space = load_space(_space(tmp_path, "techniques: {rtn: {bits: [4]}}\npipelines:\n  pg:\n"
                                        "    template: 'rtn:bits={b} + gptq:bits=4'\n    options: {b: [4]}\n"))
    assert [e.name for e in space.entries] == ["rtn"]
    assert space.notes and "pipeline 'pg' left out" in space.notes[0]
