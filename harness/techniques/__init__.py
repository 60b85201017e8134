"""The technique catalogue. Importing this package registers every technique.

Each family module registers its techniques on import. A family whose *optional
third-party dependency* is missing is skipped here and reported by ``harness
techniques`` (``IMPORT_ERRORS``); a missing or broken harness module is an error.
"""
from __future__ import annotations

import importlib

from harness.techniques.base import (
    TECHNIQUES,
    Applied,
    CompressionResult,
    Technique,
    compress,
    from_config,
    make,
    register,
)

_FAMILIES = [
    "harness.techniques.reference",
    "harness.techniques.quantization",
    "harness.techniques.pruning",
    "harness.techniques.lowrank",
    "harness.techniques.sharing",
    "harness.techniques.architecture",
    "harness.techniques.distillation",
    "harness.techniques.embedding",
    "harness.techniques.pipeline",
]


def _import_families(modules: list[str]) -> dict[str, str]:
    """Import each family module; returns {module: error} for those whose optional
    third-party dependency is missing. A missing harness module (a family listed here that
    does not exist, or a broken import inside one) is raised: that is a bug, not an option."""
    errors: dict[str, str] = {}
    for mod in modules:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name is None or e.name.split(".")[0] == "harness":
                raise
            errors[mod] = str(e)
    return errors


IMPORT_ERRORS: dict[str, str] = _import_families(_FAMILIES)

__all__ = ["TECHNIQUES", "Applied", "Technique", "CompressionResult", "compress", "from_config", "make",
           "register", "IMPORT_ERRORS"]
