"""The peak resident memory a step adds, measured as a high-water mark, not as a difference.

"RSS after minus RSS before" is not a peak: a step that allocates 500 MiB of temporaries
and frees them reads ~0, and the reading depends on what the allocator kept from earlier
work in the same process (a compression that reuses freed heap pages reads 34 MiB in one
run and 98 MiB in the next). Linux keeps a per-process high-water mark (VmHWM); writing
``5`` to ``/proc/self/clear_refs`` resets it to the current RSS. Before the reset, glibc is
asked to return its free heap pages (``malloc_trim(0)``), so "before" is what is live, not
what an earlier step left cached, and the step's own allocations must grow the RSS again.

Steps nest (a pipeline's compression contains each stage's): an inner reset would wipe the
outer mark, so each tracker hands the absolute peak it saw to its parent before resetting.
Foundation layer: techniques (compression) and measurements (forward steps) both use it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass, field
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR = Path("/proc/self/clear_refs")
ISOLATION = "VmHWM reset via /proc/self/clear_refs after glibc malloc_trim(0)"


def status_kb(field_name: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def current_rss_mb() -> float | None:
    kb = status_kb("VmRSS")
    return None if kb is None else kb / 1024


def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:  # pragma: no cover - non-glibc platforms
        return None


_LIBC = _libc()


def trim_heap() -> bool:
    """Give free malloc pages back to the OS (glibc only; False where unavailable)."""
    fn = getattr(_LIBC, "malloc_trim", None)
    if fn is None:
        return False
    fn(0)
    return True


def reset_peak() -> str | None:
    """Trim the heap and reset VmHWM to the current RSS; a reason string if it cannot."""
    if status_kb("VmHWM") is None:
        return "peak RSS needs Linux /proc/self/status (VmHWM)"
    trim_heap()
    try:
        _CLEAR.write_text("5")
    except OSError as e:
        return f"cannot reset peak RSS via /proc/self/clear_refs: {e.strerror}"
    return None


_STACK: list[PeakTracker] = []


@dataclass
class PeakTracker:
    """``with PeakTracker() as t: step()`` then ``t.peak_mb`` (absolute high-water mark during
    the step), ``t.before_mb`` (RSS after the trim, just before it) and ``t.added_mb`` (their
    difference: what the step itself added at its peak). ``t.reason`` is set, and the figures
    are None, where the mark cannot be reset (not Linux, or clear_refs not permitted)."""

    before_mb: float | None = None
    peak_mb: float | None = None
    reason: str | None = None
    _inner_peak_kb: int = field(default=0, repr=False)

    def __enter__(self) -> PeakTracker:
        parent = _STACK[-1] if _STACK else None
        if parent is not None:  # the parent's mark so far survives our reset
            parent._inner_peak_kb = max(parent._inner_peak_kb, status_kb("VmHWM") or 0)
        self.reason = reset_peak()
        if self.reason is None:
            self.before_mb = current_rss_mb()
        _STACK.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _STACK.pop()
        hwm = status_kb("VmHWM")
        if self.reason is None and hwm is not None:
            peak_kb = max(hwm, self._inner_peak_kb)
            self.peak_mb = peak_kb / 1024
            if _STACK:
                _STACK[-1]._inner_peak_kb = max(_STACK[-1]._inner_peak_kb, peak_kb)

    @property
    def added_mb(self) -> float | None:
        if self.peak_mb is None or self.before_mb is None:
            return None
        return max(self.peak_mb - self.before_mb, 0.0)


__all__ = ["ISOLATION", "PeakTracker", "current_rss_mb", "reset_peak", "status_kb", "trim_heap"]
