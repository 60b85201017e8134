"""Recipe files: a pipeline as YAML, with per-stage options and ``targets``.

The format (shared with ``mixed``'s recipe output and ``harness search`` spaces)::

    stages:
      - technique: prune-neurons
        options: {fraction: 0.25}
      - technique: gptq
        options: {bits: 4, group: 64}
        targets: ["model.layers.*.mlp.*"]   # fnmatch patterns on full module names

Option values are single numbers, strings or booleans, validated exactly as the same
option in a spec string; any mistake is a one-line ``SpecError`` naming the file and
the stage.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from harness.config import SpecError, parse_spec
from harness.techniques.pipeline import Pipeline, PipelineConfig, Stage, parse_stage

_STAGE_KEYS = ("technique", "options", "targets")


def _option_text(key: str, value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, str) and ("," in value or not value.strip()):
        raise SpecError(f"{where}: option {key}={value!r} must be a non-empty value without ','")
    if isinstance(value, (int, float, str)):
        return str(value)
    raise SpecError(f"{where}: option {key}={value!r} must be a single value (number, string, true/false)")


def recipe_stages(data: Any, where: str) -> tuple[Stage, ...]:
    """Validated stages of a parsed recipe (``{"stages": [...]}``, the shared recipe format)."""
    if not isinstance(data, dict) or not isinstance(data.get("stages"), list) or not data["stages"]:
        raise SpecError(f"{where}: expected a mapping with a non-empty 'stages' list")
    unknown = [k for k in data if k != "stages"]
    if unknown:
        raise SpecError(f"{where}: unknown top-level key {unknown[0]!r} (allowed: stages)")
    stages = []
    for i, st in enumerate(data["stages"], 1):
        at = f"{where}: stage {i}"
        if not isinstance(st, dict) or not isinstance(st.get("technique"), str):
            raise SpecError(f"{at}: expected a mapping with 'technique: NAME' (and optional options, targets)")
        for k in st:
            if k not in _STAGE_KEYS:
                close = difflib.get_close_matches(str(k), _STAGE_KEYS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise SpecError(f"{at}: unknown key {k!r}{hint} (allowed: {', '.join(_STAGE_KEYS)})")
        opts = st.get("options") or {}
        if not isinstance(opts, dict):
            raise SpecError(f"{at}: 'options' must be a mapping of option: value")
        if "targets" in opts:
            raise SpecError(f"{at}: give targets as the stage's 'targets' list, not as an option")
        targets = st.get("targets") or []
        if isinstance(targets, str) or not isinstance(targets, list) or not all(
                isinstance(p, str) and p.strip() for p in targets):
            raise SpecError(f"{at}: 'targets' must be a list of layer-name patterns, e.g. ['model.layers.*.mlp.*']")
        body = ",".join(f"{k}={_option_text(k, v, at)}" for k, v in opts.items())
        s = parse_stage(f"{st['technique'].strip()}:{body}" if body else st["technique"].strip(), at)
        try:
            stages.append(Stage(s.spec, tuple(p.strip() for p in targets)))
        except SpecError as e:
            raise SpecError(f"{at}: {e}") from None
    return tuple(stages)


def load_recipe(path: str | Path) -> Pipeline:
    """A Pipeline from a YAML recipe file (format in the module docstring)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise SpecError(f"recipe file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise SpecError(f"recipe {str(path)!r} is not valid YAML{at}: {getattr(e, 'problem', None) or e}") from None
    except UnicodeDecodeError:
        raise SpecError(f"recipe {str(path)!r} is not UTF-8 text") from None
    return Pipeline(PipelineConfig(recipe_stages(data, f"recipe {str(path)!r}")))


def recipe_dict(pipeline: Pipeline) -> dict[str, Any]:
    """The recipe of a pipeline (what ``load_recipe`` reads), e.g. to write one out."""
    out = []
    for s in pipeline.config.stages:
        name, opts = parse_spec(s.spec)
        out.append({"technique": name, **({"options": opts} if opts else {}),
                    **({"targets": list(s.targets)} if s.targets else {})})
    return {"stages": out}


__all__ = ["load_recipe", "recipe_dict", "recipe_stages"]
