"""The technique catalogue. Importing this package registers every technique.

Each family module registers its techniques on import (``spec.load_all``). A family whose
*optional third-party dependency* is missing is skipped here and reported by ``harness
techniques`` (``IMPORT_ERRORS``); a missing or broken harness module is an error.

The contract (``Technique``, the registry, ``CompressionResult``) is ``base``; spec strings,
pipelines and recipes become Techniques in ``spec`` (``make``, ``compress``).
"""
from __future__ import annotations

from harness.techniques.base import (
    TECHNIQUES,
    Applied,
    CompressionResult,
    Technique,
    from_config,
    register,
)
from harness.techniques.spec import IMPORT_ERRORS, canonical_spec, compress, load_all, make

load_all()

__all__ = ["TECHNIQUES", "Applied", "Technique", "CompressionResult", "canonical_spec", "compress", "from_config",
           "make", "register", "IMPORT_ERRORS"]
