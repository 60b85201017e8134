"""llm-compression-harness: benchmark and evaluate compressed language models.

Public API::

    import copy, harness
    lm = harness.load_model("harness-tiny")
    calib = harness.get_calibration(lm.tokenizer, n=32)
    res = harness.compress(copy.deepcopy(lm.model), "gptq:bits=4,group=128", calibration=calib)
    records = harness.evaluate(lm, res.model, ["ppl.window", "size.bits_per_param"])

Names are imported lazily (PEP 562) so that loading the pytest plugin or the CLI does
not pay for torch and transformers until they are used.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "harness.models.zoo", "LoadedModel": "harness.models.hf",
    "compress": "harness.techniques.spec", "make": "harness.techniques.spec",
    "register": "harness.techniques.base", "Technique": "harness.techniques.base",
    "CompressionResult": "harness.techniques.base", "Applied": "harness.techniques.base",
    "evaluate": "harness.evaluation", "EvalContext": "harness.evaluation",
    "Record": "harness.records", "RecordWriter": "harness.records", "load_records": "harness.records",
    "get_calibration": "harness.calibration", "Calibration": "harness.calibration",
    "save_compressed": "harness.checkpoint", "load_compressed": "harness.checkpoint",
    "export": "harness.formats.export",
    "LatencyConfig": "harness.config", "EvalConfig": "harness.config", "parse_spec": "harness.config",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'harness' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
