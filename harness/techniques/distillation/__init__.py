"""Knowledge distillation (``distill``): response-, feature- and relation-based losses from
the uncompressed teacher to a student built by ``techniques.architecture.student``.
Importing this package registers it."""
from harness.techniques.distillation import distill, losses  # noqa: F401  (registration on import)
