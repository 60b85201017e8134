"""User-supplied text files (``--text``, ``--calibration-text``): read once as UTF-8, with
the sha256 that goes into the records so a figure names the exact bytes it was measured on."""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path


def read_text(path: str | os.PathLike) -> tuple[str, str]:
    """``(text, sha256 hex)`` of a UTF-8 file; a missing, unreadable, non-UTF-8 or empty file
    is a one-line ``ValueError`` naming it."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except OSError as e:
        raise ValueError(f"text file {str(path)!r} cannot be read: {e.strerror or e}") from None
    return _read(str(p.resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4)
def _read(path: str, _mtime: int, _size: int) -> tuple[str, str]:
    try:
        raw = Path(path).read_bytes()
    except OSError as e:  # a directory, no permission
        raise ValueError(f"text file {path!r} cannot be read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"text file {path!r} is not UTF-8 (byte {e.start}); give a UTF-8 text file") from None
    if not text.strip():
        raise ValueError(f"text file {path!r} is empty")
    return text, hashlib.sha256(raw).hexdigest()
