"""Recipe files: the same pipeline as its spec string, targets per stage, and one-line
errors (exit 2 through the CLI) for every malformed file."""
from __future__ import annotations

import pytest

from harness.config import SpecError
from harness.techniques import make
from harness.techniques.recipe import load_recipe, recipe_dict


def test_a_recipe_is_the_same_pipeline_as_its_spec(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("stages:\n"
                 "  - technique: magnitude\n    options: {sparsity: 0.5, format: dense}\n"
                 "  - technique: rtn\n    options: {bits: 4, group: 32}\n    targets: ['model.layers.*.mlp.*']\n"
                 "  - technique: rtn\n    options: {bits: 8}\n    targets: ['model.layers.*.self_attn.*']\n")
    t = load_recipe(f)
    same = make("magnitude:sparsity=0.5,format=dense + rtn:bits=4,group=32,targets=model.layers.*.mlp.* + "
                "rtn:bits=8,targets=model.layers.*.self_attn.*")
    assert t.config == same.config and make(str(f)).config == t.config
    assert recipe_dict(t)["stages"][1] == {"technique": "rtn", "options": {"group": "32"},
                                           "targets": ["model.layers.*.mlp.*"]}


@pytest.mark.parametrize("text,match", [
    ("stages: [\n", "not valid YAML at line"),
    ("- technique: rtn\n", "expected a mapping with a non-empty 'stages' list"),
    ("stages:\n  - technique: rtn\n    option: {bits: 4}\n", "unknown key 'option'; did you mean 'options'?"),
    ("stages:\n  - technique: rtnn\n", "unknown technique 'rtnn'"),
    ("stages:\n  - technique: rtn\n    options: {bits: 5}\n", "bits=5"),
    ("stages:\n  - technique: rtn\n    targets: model.layers.*\n", "'targets' must be a list"),
    ("stages:\n  - technique: rtn\n    options: [4]\n", "'options' must be a mapping"),
    ("stages:\n  - technique: rtn\n    options: {bits: [4]}\n", "must be a single value"),
    ("stages:\n  - technique: distill\n    options: {loss: 'logits,hidden'}\n", "without ','"),
    ("stages:\n  - technique: rtn\n    targets: ['model.layers.0.*|x']\n", "stage 1: targets pattern"),
    ("stages:\n  - technique: rtn\nextra: 1\n", "unknown top-level key 'extra'"),
])
def test_malformed_recipes_are_one_line_errors(tmp_path, text, match):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(SpecError) as e:
        make(str(f))
    assert match in str(e.value) and "\n" not in str(e.value)


def test_cli_malformed_recipe_is_exit_2(capsys, tmp_path):
    from harness.cli import main

    f = tmp_path / "r.yaml"
    f.write_text("stages:\n  - technique: gptq\n    opts: {bits: 4}\n")
    code = main(["eval", "harness-tiny", "-t", str(f)])
    err = capsys.readouterr().err
    assert code == 2 and "unknown key 'opts'; did you mean 'options'?" in err and err.count("\n") == 1


def test_a_recipe_file_written_from_a_pipeline_loads_back(tmp_path):
    import yaml

    t = make("prune-neurons:fraction=0.3 + gptq:bits=3,group=64,targets=model.layers.*.mlp.*|model.layers.0.*")
    f = tmp_path / "out.yml"
    f.write_text(yaml.safe_dump(recipe_dict(t)))
    assert load_recipe(f).config == t.config


def test_a_mixed_precision_recipe_runs_as_a_pipeline():
    """The shared format: ``mixed_recipe`` (one gptq stage per width, exact layer names as
    targets) loads as a pipeline that gives every layer its width."""
    import torch
    from conftest import ids, random_llama

    from harness.calibration import Calibration
    from harness.techniques import compress
    from harness.techniques.recipe import recipe_stages

    mixed = pytest.importorskip("harness.techniques.quantization.mixed")
    from harness.techniques.pipeline import Pipeline, PipelineConfig

    model = random_llama()
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n]
    bits = {n: (2, 3, 4, 8)[i % 4] for i, n in enumerate(names)}
    t = Pipeline(PipelineConfig(recipe_stages(mixed.mixed_recipe(bits, group=32), "mixed recipe")))
    x = ids(4, 32)
    res = compress(model, t, calibration=Calibration(x, torch.ones_like(x)))
    assert {n: res.model.get_submodule(n).bits for n in names} == bits
