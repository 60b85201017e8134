"""The technique catalogue. Importing this package registers every technique.

Each family module registers its techniques on import; a family that fails to import
(missing optional dependency) is skipped here and reported by ``harness techniques``.
"""
from __future__ import annotations

import importlib

from harness.techniques.base import TECHNIQUES, CompressionResult, Technique, compress, make, register

IMPORT_ERRORS: dict[str, str] = {}

_FAMILIES = [
    "harness.techniques.reference",
    "harness.techniques.quantization",
    "harness.techniques.pruning",
    "harness.techniques.lowrank",
    "harness.techniques.sharing",
    "harness.techniques.distillation",
    "harness.techniques.architecture",
    "harness.techniques.pipeline",
]

for _mod in _FAMILIES:
    try:
        importlib.import_module(_mod)
    except ModuleNotFoundError as e:
        if e.name != _mod:  # a real missing dependency, not a not-yet-written module
            IMPORT_ERRORS[_mod] = str(e)

__all__ = ["TECHNIQUES", "Technique", "CompressionResult", "compress", "make", "register", "IMPORT_ERRORS"]
