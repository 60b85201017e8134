"""Low-rank factorization: truncated SVD, ASVD, SVD-LLM (with rank allocation) and
CALDERA (``W ≈ Q + L R``, quantized). Importing this package registers them."""
from harness.techniques.lowrank import (  # noqa: F401  (registration on import)
    caldera,
    rank_alloc,
    svd,
)
