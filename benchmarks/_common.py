"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<script>.py``, which
puts this folder on ``sys.path``)."""
from __future__ import annotations


def table(header: list[str], rows: list[list]) -> str:
    """A Markdown table: one header row, a separator, one line per row (cells via ``str``)."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)
