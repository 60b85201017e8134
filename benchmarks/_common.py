"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<script>.py``, which
puts this folder on ``sys.path``).

Docs pages: a benchmark writes a whole page (``write_doc(path, text)``), or only the
marked regions it owns, ``<!-- section:NAME -->`` ... ``<!-- /section:NAME -->``
(``write_doc(path, body, section=NAME)``); text outside a page's regions is hand-written
and kept.
"""
from __future__ import annotations

from pathlib import Path

from harness.paths import atomic_write


def table(header: list[str], rows: list[list]) -> str:
    """A Markdown table: one header row, a separator, one line per row (cells via ``str``)."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def fmt_record(r, *, unit: bool = True, n: bool = True) -> str:
    """A Record as ``value [unit] (p10 .., p90 .. [, n=..])``, ``N/A (reason)``, or ``-`` for None."""
    if r is None:
        return "-"
    if r.value is None:
        return f"N/A ({r.reason})"
    s = r.spread or {}
    spread = f" (p10 {s['p10']:.4g}, p90 {s['p90']:.4g}{f', n={r.n}' if n else ''})" if s.get("p10") is not None else ""
    return f"{r.value:.4g}" + (f" {r.unit}" if unit else "") + spread


def markers(name: str) -> tuple[str, str]:
    """The begin and end markers of region ``name`` of a docs page."""
    return f"<!-- section:{name} -->", f"<!-- /section:{name} -->"


def splice(doc: str, name: str, body: str, *, heading: str = "") -> str:
    """``doc`` with the text between ``name``'s markers replaced by ``body``; a ``doc``
    without them gets the region appended (under ``heading`` when given). Damaged markers
    (one missing, doubled or out of order) raise rather than guess."""
    b, e = markers(name)
    if doc.count(b) != 1 or doc.count(e) != 1 or doc.index(b) > doc.index(e):
        if b in doc or e in doc:
            raise ValueError(f"the markers of section {name!r} are damaged; fix them by hand")
        doc = doc.rstrip("\n") + ("\n\n" if doc.strip() else "") + (f"{heading}\n\n" if heading else "") + f"{b}\n{e}\n"
    head, rest = doc.split(b, 1)
    _, tail = rest.split(e, 1)
    return f"{head}{b}\n{body.strip()}\n{e}{tail}"


def write_doc(path: str | Path, text: str, *, section: str | None = None, heading: str = "",
              blank: str = "") -> Path:
    """Write a generated docs page atomically (``harness.paths.atomic_write``) and say so. With
    ``section``, ``text`` replaces only that region of the page as it is on disk now (read
    here, so regions measured by separate runs do not overwrite each other); a page not
    there yet starts as ``blank``."""
    path = Path(path)
    if section is not None:
        doc = path.read_text(encoding="utf-8") if path.is_file() else blank
        try:
            text = splice(doc, section, text, heading=heading)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
    atomic_write(path, text)
    print(f"wrote {path}" + (f" (section {section})" if section else ""), flush=True)
    return path
