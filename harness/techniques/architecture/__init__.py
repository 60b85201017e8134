"""Efficient architecture: smaller students of the teacher's architecture (``student``) and
grouped-query attention conversion (``gqa``). Importing this package registers them."""
from harness.techniques.architecture import gqa, student  # noqa: F401  (registration on import)
