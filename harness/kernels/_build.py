"""Lazy Triton kernel construction, so one process can run compiled kernels or the CPU
interpreter (``TRITON_INTERPRET=1``) depending on the environment *at call time*.

``triton.jit`` decides between a compiled ``JITFunction`` and the interpreter when it
decorates, so decorating at import would freeze whatever the environment said when
``harness.kernels`` was first imported. ``LazyKernel`` keeps the plain function and
builds (``jit`` -> ``heuristics`` -> ``autotune``) on first launch, once per mode. Under the
interpreter the autotuner gets a single small config, so it never tries to benchmark.
"""
from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from typing import Any


@functools.lru_cache(maxsize=1)
def triton_missing_reason() -> str | None:
    """None when ``import triton`` works, else why not (the kernels are optional)."""
    try:
        import triton
        import triton.language  # noqa: F401
    except Exception as e:  # ImportError, or a broken install
        return f"triton is not importable ({type(e).__name__}: {e}); install the 'gpu' extra"
    return None


def interpreting() -> bool:
    """True when ``TRITON_INTERPRET`` asks for the CPU interpreter (Triton's own truthiness)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def mode_mismatch_reason() -> str | None:
    """Triton fixes interpreter vs compiled mode when ``triton.language`` is imported (its
    standard-library functions are built then); a later change of ``TRITON_INTERPRET`` cannot
    take effect in this process. None when the two agree."""
    import triton.language as tl
    from triton.runtime.jit import JITFunction

    compiled = isinstance(tl.zeros, JITFunction)
    if interpreting() and compiled:
        return ("TRITON_INTERPRET=1 was set after triton was imported (triton runs compiled in this "
                "process); set it before Python starts")
    if not interpreting() and not compiled:
        return "triton was imported with TRITON_INTERPRET=1 but it is unset now; kernels cannot compile"
    return None


class LazyKernel:
    """A Triton kernel built on first use: ``kernel[grid](*args, **kwargs)``.

    ``configs`` are ``(kwargs, num_warps, num_stages)`` tuples; ``interpret_config`` is the
    single kwargs dict used under the interpreter. ``prune(configs, named_args)`` may drop
    configs that cannot fit the shape (it must keep at least one).
    """

    def __init__(self, fn: Callable, *, configs: list[tuple[dict[str, Any], int, int]], key: list[str],
                 interpret_config: dict[str, Any], heuristics: dict[str, Callable] | None = None,
                 prune: Callable | None = None) -> None:
        self.fn, self.configs, self.key = fn, configs, key
        self.interpret_config, self.heuristics, self.prune = interpret_config, heuristics, prune
        self._built: dict[bool, Any] = {}

    def build(self) -> Any:
        mode = interpreting()
        if mode not in self._built:
            import triton

            k = triton.jit(self.fn)
            if self.heuristics:
                k = triton.heuristics(self.heuristics)(k)
            if mode:
                configs = [triton.Config(self.interpret_config, num_warps=1, num_stages=1)]
                prune = None
            else:
                configs = [triton.Config(kw, num_warps=w, num_stages=s) for kw, w, s in self.configs]
                prune = {"early_config_prune": self._prune} if self.prune else None
            extra = {}
            if not mode and "cache_results" in inspect.signature(triton.autotune).parameters:
                extra["cache_results"] = True  # keep tuned configs on disk across processes (triton >= 3.2)
            self._built[mode] = triton.autotune(configs=configs, key=self.key, prune_configs_by=prune, **extra)(k)
        return self._built[mode]

    def _prune(self, configs, named_args, **kwargs):
        kept = [c for c in configs if self.prune(c.kwargs, {**named_args, **kwargs})]
        return kept or configs[:1]

    def best_config(self) -> Any:
        """The config the autotuner picked for the last launch (None before any)."""
        k = self._built.get(interpreting())
        return getattr(k, "best_config", None)

    def __getitem__(self, grid):
        return self.build()[grid]
