"""Pruning: unstructured (magnitude, Taylor, OBD), SparseGPT, Wanda, N:M, structured
removal (neurons, heads, layers) and an optional recovery fine-tune. Importing this
package registers every pruning technique."""
from harness.techniques.pruning import (  # noqa: F401  (registration on import)
    importance,
    nm,
    recovery,
    sparsegpt,
    structured,
    unstructured,
    wanda,
)
