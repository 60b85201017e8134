"""Extract the embedded English corpus from text that ships with CPython.

Sources: ``pydoc_data.topics`` (the language reference topics behind ``help()``) and the
docstrings of a fixed list of pure-Python stdlib modules. The extracted text is committed
under ``harness/models/corpus/`` with sha256 sums, because stdlib text changes between
Python versions; the splits are checked against those sums at load time.

Run as ``python -m harness.models.corpus_build`` to regenerate (the sums will change if
your Python differs from the one that built the committed corpus).
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import re
import sys
from pathlib import Path

CORPUS_DIR = Path(__file__).parent / "corpus"

# Pure-Python stdlib modules with long, prose-like docstrings.
DOC_MODULES = [
    "argparse", "asyncio", "base64", "bisect", "calendar", "cmd", "codecs", "collections",
    "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal",
    "difflib", "doctest", "email", "enum", "fractions", "ftplib", "functools", "getopt",
    "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "html", "http.client",
    "http.server", "imaplib", "inspect", "ipaddress", "json", "locale", "logging",
    "mailbox", "multiprocessing", "numbers", "operator", "optparse", "os", "pathlib",
    "pdb", "pickle", "pickletools", "platform", "plistlib", "poplib", "pprint", "pydoc",
    "queue", "random", "re", "sched", "secrets", "selectors", "shelve", "shlex", "shutil",
    "smtplib", "socket", "socketserver", "statistics", "string", "subprocess", "tarfile",
    "tempfile", "textwrap", "threading", "timeit", "tokenize", "trace", "traceback",
    "turtle", "typing", "unittest", "urllib.parse", "urllib.request", "uuid", "warnings",
    "wave", "weakref", "xml.dom.minidom", "zipfile", "zipimport",
]
SPLIT_EVERY = 20  # document i goes to validation if i % 20 in (7, 17), test if i % 20 == 13


def _docstrings(modname: str) -> list[str]:
    try:
        mod = importlib.import_module(modname)
    except Exception:  # pragma: no cover - optional stdlib parts (tkinter, curses)
        return []
    out: list[str] = []
    seen: set[int] = set()

    def add(obj: object) -> None:
        doc = inspect.getdoc(obj)
        if doc and len(doc) > 200 and id(doc) not in seen:
            seen.add(id(doc))
            out.append(doc)

    add(mod)
    for name, obj in sorted(vars(mod).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
            continue
        add(obj)
        if inspect.isclass(obj):
            for _, meth in sorted(vars(obj).items()):
                if inspect.isfunction(meth):
                    add(meth)
    return out


def documents() -> list[str]:
    """All documents in a fixed order (topics first, then module docstrings)."""
    import pydoc_data.topics as topics

    docs = [topics.topics[k].strip() for k in sorted(topics.topics)]
    for m in DOC_MODULES:
        docs.extend(d.strip() for d in _docstrings(m))
    # Deduplicate: stdlib repeats docstrings (aliases, re-exports). A paragraph seen in an
    # earlier document is dropped so no text can sit in both training and evaluation splits.
    seen: set[str] = set()
    out = []
    for d in docs:
        paras = []
        for p in re.sub(r"\n{3,}", "\n\n", d).split("\n\n"):
            key = " ".join(p.split())
            if key and key not in seen:
                seen.add(key)
                paras.append(p)
        if paras and sum(len(p) for p in paras) > 200:
            out.append("\n\n".join(paras))
    return out


def build() -> dict[str, str]:
    docs = documents()
    splits: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    for i, d in enumerate(docs):
        r = i % SPLIT_EVERY
        splits["validation" if r in (7, 17) else "test" if r == 13 else "train"].append(d)
    CORPUS_DIR.mkdir(parents=True, exist_ok=True)
    sums = {}
    for name, parts in splits.items():
        text = "\n\n".join(parts) + "\n"
        data = text.encode("utf-8")
        (CORPUS_DIR / f"{name}.txt").write_bytes(data)
        sums[name] = hashlib.sha256(data).hexdigest()
    meta = {"python": sys.version.split()[0], "documents": len(docs), "sha256": sums}
    (CORPUS_DIR / "SHA256SUMS.json").write_text(json.dumps(meta, indent=2) + "\n")
    return sums


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(build(), indent=2))
