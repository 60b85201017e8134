"""Pipelines and search benchmark (issue 15): writes docs/results/pipelines.md from three sections,
each a module with ``run(quick: bool) -> str`` returning Markdown:

- ``chain``  (``pipelines_chain.py``): a named pipeline >= 8x smaller than fp32 at <= +10%
  validation perplexity on harness-tiny, each stage's contribution, and the best single
  technique at the same size;
- ``mixed``  (``pipelines_mixed.py``): per-layer mixed precision against uniform GPTQ;
- ``search`` (``pipelines_search.py``): the budgeted search's frontier.

    .venv/bin/python benchmarks/bench_pipelines.py                          # every section
    .venv/bin/python benchmarks/bench_pipelines.py --section chain [--quick]

``--section NAME`` runs one section and replaces only the text between its
``<!-- section:NAME -->`` and ``<!-- /section:NAME -->`` markers, so the sections are
measured independently; a section whose module does not exist yet is skipped (its old
text stays). The file is replaced atomically.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from harness.paths import atomic_write

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
SECTIONS = ("chain", "mixed", "search")
TITLES = {"chain": "A pipeline that is 8x smaller", "mixed": "Per-layer mixed precision",
          "search": "Budgeted search: the Pareto frontier"}
HEADER = """# Pipelines, mixed precision and search

Written by `.venv/bin/python benchmarks/bench_pipelines.py` (one section per module: `pipelines_chain.py`,
`pipelines_mixed.py`, `pipelines_search.py`); `--section NAME` re-measures one section and
leaves the others as they are. Wall times were measured on a shared 2-core machine.
"""


def begin(name: str) -> str:
    return f"<!-- section:{name} -->"


def end(name: str) -> str:
    return f"<!-- /section:{name} -->"


def skeleton() -> str:
    """An empty document with every section's markers, in order."""
    parts = [HEADER]
    for s in SECTIONS:
        parts.append(f"## {TITLES[s]}\n\n{begin(s)}\n_not measured yet: run `python benchmarks/bench_pipelines.py "
                     f"--section {s}`_\n{end(s)}\n")
    return "\n".join(parts)


def replace_section(doc: str, name: str, body: str) -> str:
    """``doc`` with the text between ``name``'s markers replaced by ``body`` (markers are
    appended, under a heading, when the document lacks them)."""
    b, e = begin(name), end(name)
    if doc.count(b) != 1 or doc.count(e) != 1 or doc.index(b) > doc.index(e):
        if b in doc or e in doc:
            raise ValueError(f"docs/results/pipelines.md: the markers of section {name!r} are damaged; fix them by hand")
        doc = doc.rstrip("\n") + f"\n\n## {TITLES.get(name, name)}\n\n{b}\n{e}\n"
    head, rest = doc.split(b, 1)
    _, tail = rest.split(e, 1)
    return f"{head}{b}\n{body.strip()}\n{e}{tail}"


def section_module(name: str):
    """The section's module, or None when its file does not exist (yet)."""
    if not (HERE / f"pipelines_{name}.py").is_file():
        return None
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    return importlib.import_module(f"pipelines_{name}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--section", choices=SECTIONS, action="append",
                    help="run only this section (repeatable); default: every section")
    ap.add_argument("--quick", action="store_true", help="the sections' smoke settings (minutes)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "pipelines.md"))
    a = ap.parse_args(argv)
    out = Path(a.out)
    for name in a.section or SECTIONS:
        mod = section_module(name)
        if mod is None:
            print(f"section {name}: benchmarks/pipelines_{name}.py does not exist yet; skipped", flush=True)
            continue
        t0 = time.perf_counter()
        print(f"section {name}: running{' (quick)' if a.quick else ''} ...", flush=True)
        body = mod.run(a.quick)
        doc = out.read_text(encoding="utf-8") if out.is_file() else skeleton()
        atomic_write(out, replace_section(doc, name, body))  # re-read: another section may have written
        print(f"section {name}: written to {out} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
