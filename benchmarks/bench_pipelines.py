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

from _common import splice, write_doc

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


def skeleton() -> str:
    """An empty document with every section's markers, in order."""
    return "\n".join([HEADER] + [f"## {TITLES[s]}\n\n" + splice("", s, f"_not measured yet: run `python "
                                 f"benchmarks/bench_pipelines.py --section {s}`_") for s in SECTIONS])


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
        write_doc(out, mod.run(a.quick), section=name, heading=f"## {TITLES[name]}", blank=skeleton())
        print(f"section {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
