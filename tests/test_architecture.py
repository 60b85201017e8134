"""Imports run one way: model -> technique -> compressed model -> measurements -> records ->
baselines/report. Every ``harness`` module belongs to one layer of ``LAYERS`` (the table
below is the single statement of the order; ARCHITECTURE.md explains it) and may import
only from its own layer or lower ones. Lazy imports inside functions count too: a cycle
hidden in a function body is still a backwards dependency. No two modules import each
other, directly or around a circle, inside a layer too; contract modules import nothing
else from their own package; a report reads verdicts and never judges."""
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
    ("models", ["harness.models", "harness.tasks", "harness.calibration",
                "harness.formats"]),                        # GGUF / compressed-tensors <-> packed layers
    ("techniques", ["harness.techniques"]),                 # model -> compressed model
    ("measure", ["harness.measure"]),                       # compressed model -> figures
    ("evaluation", ["harness.evaluation"]),                 # figures -> Records, one path for all
    ("search", ["harness.search"]),                         # budgeted multi-objective search (a frontier)
    ("baselines", ["harness.baselines"]),                   # Records -> verdicts (judge_run), gate
    ("history", ["harness.leaderboard", "harness.changepoints"]),                   # runs -> SQLite history and ranking
    ("report", ["harness.report"]),                         # Records + verdicts -> HTML/Markdown
    ("runs", ["harness.options", "harness.caches", "harness.runwriter", "harness.session", "harness.controller",
              "harness.bench", "harness.suite", "harness.runner", "harness.ab",  # a pytest session; --against
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
# Contract modules: what the rest of their package builds on; they import nothing else from it.
CONTRACTS = {"harness.techniques.base": "harness.techniques", "harness.layers.base": "harness.layers",
             "harness.models.hf": "harness.models"}
# Names that judge: a report may read verdicts (read_verdicts, Verdict) but never call these.
JUDGES = {"judge_run", "judge_runs", "run_verdicts"}


def layer_of(module: str) -> int:
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    if rank is None:
        raise AssertionError(f"{module} is in no layer of tests/test_architecture.py")
    return rank


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str, root: Path) -> bool:
    rel = Path(*name.split(".")[1:]) if "." in name else Path()
    base = root / rel
    return name == root.name or base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _exports(root: Path) -> dict[str, str]:
    """The package's lazy export table (``harness._EXPORTS``: name -> defining module)."""
    init = root / "__init__.py"
    for node in ast.walk(ast.parse(init.read_text(encoding="utf-8"))) if init.is_file() else []:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_EXPORTS" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def harness_imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, module) of every import of the package in ``path``, lazy ones included:
    ``from pkg.a import b`` is ``pkg.a.b`` when b is a module, else ``pkg.a``; a lazy export
    of the package root is the module that defines it."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top, exports = root.name, _exports(root)
    me = module_name(path, root)
    pkg = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == top]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != top:
                continue
            for a in node.names:
                sub = f"{mod}.{a.name}"
                if mod == top and a.name in exports:
                    out.append((node.lineno, exports[a.name]))
                else:
                    out.append((node.lineno, sub if _is_module(sub, root) else mod))
    return out


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the package modules it imports (the package root's lazy table left out)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        me = module_name(path, root)
        if me == root.name:
            continue  # the lazy export table names every layer by design
        targets = set()
        for _, t in harness_imports(path, root):
            while not _is_module(t, root):
                t = t.rsplit(".", 1)[0]
            if t != me and t != root.name:
                targets.add(t)
        graph[me] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of two or more modules (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                group = []
                while True:
                    x = stack.pop()
                    on.discard(x)
                    group.append(x)
                    if x == v:
                        break
                if len(group) > 1:
                    out.append(sorted(group))
    return out


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
            if layer_of(target) > mine:
                bad.append(f"{path.relative_to(ROOT.parent)}:{line}: {me} ({LAYERS[mine][0]}) imports "
                           f"{target} ({LAYERS[layer_of(target)][0]})")
            for low, high in FORBIDDEN:
                if (me == low or me.startswith(low + ".")) and (target == high or target.startswith(high + ".")):
                    bad.append(f"{path.relative_to(ROOT.parent)}:{line}: {me} must not import {target}")
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_no_import_circle_anywhere():
    found = cycles(import_graph())
    assert not found, "import circles (lazy imports included):\n" + "\n".join(" <-> ".join(c) for c in found)


def test_a_planted_circle_is_found(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import c\n")  # lazy, relative
    (pkg / "c.py").write_text("from pkg.a import thing\n")
    (pkg / "d.py").write_text("import pkg.a\n")  # imports into the circle, not part of it
    assert cycles(import_graph(pkg)) == [["pkg.a", "pkg.c", "pkg.sub.b"]]


def test_contract_modules_import_nothing_else_from_their_package():
    bad = []
    for mod, package in CONTRACTS.items():
        path = ROOT.parent / (mod.replace(".", "/") + ".py")
        bad += [f"{mod}:{line} imports {t}" for line, t in harness_imports(path)
                if (t == package or t.startswith(package + ".")) and t != mod]
    assert not bad, bad


def test_a_report_reads_verdicts_and_never_judges():
    bad = []
    for path in sorted((ROOT / "report").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.ImportFrom) else [node.attr]
                     if isinstance(node, ast.Attribute) else [node.id] if isinstance(node, ast.Name) else [])
            bad += [f"{path.relative_to(ROOT.parent)}:{node.lineno}: {n}" for n in names if n in JUDGES]
    assert not bad, "report modules must take verdicts, not judge:\n" + "\n".join(bad)


@pytest.mark.parametrize("limit", [350])
def test_no_module_is_too_big(limit):
    big = [f"{p.relative_to(ROOT.parent)}: {n} lines" for p in MODULES
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > limit]
    assert not big, big
