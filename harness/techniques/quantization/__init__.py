"""Quantization: RTN, GPTQ, AWQ, SmoothQuant, NF4 / k-means, QAT, dynamic int8,
KV-cache quantization and GPU-only bitsandbytes / fp8. Importing this package
registers every quantization technique. The arithmetic (group-wise uniform quantization,
packing, codebooks, scale searches) is in ``harness.primitives``."""
from harness.techniques.quantization import (  # noqa: F401  (registration on import)
    awq,
    common,
    dynamic,
    gptq,
    gpu,
    kv_cache,
    mixed,
    nonuniform,
    qat,
    rtn,
    smoothquant,
)
