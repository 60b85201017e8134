"""Files and paths: safe names, containment, atomic writes and whole-line appends (every
file the harness writes goes through here or through safetensors).

Suite names, device classes, run ids and worker tags come from records files, the
environment or the command line; any of them may be crafted. A name becomes one path
component only after ``safe_component`` accepted it, and the joined path must resolve
inside its root (``inside``), so nothing is ever written outside the directory a command
was pointed at.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=@-]{0,127}")


def safe_component(name: str, what: str) -> str:
    """``name`` if it is a plain file name (letters, digits, ``._+=@-``; no separators,
    no ``..``), else a one-line ValueError naming the value and what is allowed."""
    if not isinstance(name, str) or not _SAFE.fullmatch(name) or ".." in name:
        raise ValueError(f"{what} {name!r} is not a safe file name (allowed: letters, digits and ._+=@-, "
                         f"starting with a letter or digit, at most 128 characters, no '..')")
    return name


def inside(root: str | Path, *parts: str) -> Path:
    """``root / parts...`` resolved, refusing any result outside ``root`` (symlinks included)."""
    base = Path(root).resolve()
    path = base.joinpath(*parts).resolve()
    if path != base and base not in path.parents:
        raise ValueError(f"path {'/'.join(parts)!r} escapes {str(base)!r}")
    return path


def cache_root() -> Path:
    """The harness's user cache: ``$HARNESS_CACHE``, else ``$XDG_CACHE_HOME/llm-compression-harness``,
    else ``~/.cache/llm-compression-harness``."""
    if os.environ.get("HARNESS_CACHE"):
        return Path(os.environ["HARNESS_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "llm-compression-harness"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary sibling and ``os.replace``: readers see
    the old file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp's 0600 would make reports private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def append_jsonl(path: Path, rows: list[dict], *, fsync: bool = False) -> int:
    """Append ``rows`` as JSON lines with a single ``write`` on an ``O_APPEND`` descriptor,
    so concurrent writers never interleave and a crash leaves only whole lines (at most a
    torn last line, which readers skip). Returns the number of lines written."""
    import json

    if not rows:
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows).encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    return len(rows)
