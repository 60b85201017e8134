"""llm-compression-harness: benchmark and evaluate compressed language models.

Public API::

    import harness
    lm = harness.load_model("harness-tiny")
    calib = harness.get_calibration(lm.tokenizer, n=32)
    res = harness.compress(copy.deepcopy(lm.model), "gptq:bits=4,group=128", calibration=calib)
    records = harness.evaluate(lm, res.model, ["ppl.window", "size.bits_per_param"])
"""
from __future__ import annotations

__version__ = "0.1.0"

from harness.calibration import Calibration, get_calibration
from harness.checkpoint import load_compressed, save_compressed
from harness.config import LatencyConfig, EvalConfig, parse_spec
from harness.evaluate import EvalContext, evaluate
from harness.models.zoo import LoadedModel, load_model
from harness.records import Record, RecordWriter, load_records
from harness.techniques.base import CompressionResult, Technique, compress, make, register

__all__ = ["load_model", "LoadedModel", "compress", "make", "register", "Technique",
           "CompressionResult", "evaluate", "EvalContext", "Record", "RecordWriter", "load_records",
           "get_calibration", "Calibration", "save_compressed", "load_compressed",
           "LatencyConfig", "EvalConfig", "parse_spec", "__version__"]
