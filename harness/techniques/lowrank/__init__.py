"""Low-rank factorization: truncated SVD, ASVD, SVD-LLM (with rank allocation) and
CALDERA (``W ≈ Q + L R``, quantized). Importing this package registers them."""
from harness.techniques.lowrank import rank_alloc, svd, tune  # noqa: F401  (registration on import)
from harness.techniques.lowrank import caldera  # noqa: F401
