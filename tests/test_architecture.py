"""Imports run one way: model -> technique -> compressed model -> measurements -> records ->
baselines/report. Every ``harness`` module belongs to one layer of ``LAYERS`` (the table
below is the single statement of the order; ARCHITECTURE.md explains it) and may import
only from its own layer or lower ones. Lazy imports inside functions count too: a cycle
hidden in a function body is still a backwards dependency."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "harness"

# Lowest first. A module belongs to the layer of its longest matching prefix.
LAYERS: list[tuple[str, list[str]]] = [
    ("foundation", ["harness.registry", "harness.config", "harness.paths", "harness.metrics", "harness.shard",
                    "harness.peakmem", "harness.records", "harness.rundir", "harness.merge", "harness.stats"]),
    ("primitives", ["harness.primitives"]),                 # tensor math: quantize, pack, k-means
    ("kernels", ["harness.kernels"]),                       # Triton kernels + torch references
    ("layers", ["harness.layers"]),                         # packed modules, save/load args
    ("checkpoint", ["harness.checkpoint"]),                 # safetensors + manifest
    ("models", ["harness.models", "harness.tasks", "harness.calibration"]),
    ("techniques", ["harness.techniques"]),                 # model -> compressed model
    ("measure", ["harness.measure"]),                       # compressed model -> figures
    ("evaluation", ["harness.evaluation"]),                 # figures -> Records, one path for all
    ("search", ["harness.search"]),                         # budgeted multi-objective search (a frontier)
    ("baselines", ["harness.baselines", "harness.baseline_file", "harness.judge"]),  # Records -> verdicts
    ("history", ["harness.leaderboard", "harness.changepoints"]),                   # runs -> SQLite history and ranking
    ("report", ["harness.report"]),                         # Records + verdicts -> HTML/Markdown
    ("runs", ["harness.runner", "harness.bench", "harness.session",  # pytest sessions, run dirs
              "harness.executor_ray"]),                     # (model x technique) cells as Ray tasks
    ("entry", ["harness.plugin", "harness.cli", "harness.cli_run", "harness.cli_baseline", "harness.cli_reports",
               "harness.cli_history", "harness.cli_search", "harness"]),  # user-facing entry points
]
# Within one layer, these pairs must not import each other in this direction either.
FORBIDDEN = [
    ("harness.techniques.sharing", "harness.techniques.lowrank"),
    ("harness.measure", "harness.techniques"),
    ("harness.techniques", "harness.measure"),
]


def layer_of(module: str) -> int:
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    if rank is None:
        raise AssertionError(f"{module} is in no layer of tests/test_architecture.py")
    return rank


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def harness_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    pkg = module_name(path).rsplit(".", 0 if path.name == "__init__.py" else 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("harness")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod == "harness":  # from harness import x: x is a submodule or a lazy export
                out += [(node.lineno, f"harness.{a.name}") for a in node.names]
            elif mod.startswith("harness"):
                out.append((node.lineno, mod))
    return out


def _resolve(name: str) -> str:
    """``harness.evaluate`` (a lazy export) -> the module that defines it."""
    import harness

    short = name.split(".", 1)[1] if "." in name else ""
    return harness._EXPORTS.get(short, name) if short and "." not in short else name


MODULES = sorted(ROOT.rglob("*.py"))


def test_every_module_has_a_layer():
    for path in MODULES:
        layer_of(module_name(path))


def test_imports_run_one_way():
    bad = []
    for path in MODULES:
        me = module_name(path)
        if me == "harness":
            continue  # the package's lazy export table names every layer by design
        mine = layer_of(me)
        for line, target in harness_imports(path):
            target = _resolve(target)
            if layer_of(target) > mine:
                bad.append(f"{path.relative_to(ROOT.parent)}:{line}: {me} ({LAYERS[mine][0]}) imports "
                           f"{target} ({LAYERS[layer_of(target)][0]})")
            for low, high in FORBIDDEN:
                if (me == low or me.startswith(low + ".")) and (target == high or target.startswith(high + ".")):
                    bad.append(f"{path.relative_to(ROOT.parent)}:{line}: {me} must not import {target}")
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


@pytest.mark.parametrize("limit", [350])
def test_no_module_is_too_big(limit):
    big = [f"{p.relative_to(ROOT.parent)}: {n} lines" for p in MODULES
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > limit]
    assert not big, big
