"""Timers and repeat-until-stable sampling shared by every latency measurement.

CPU: ``time.perf_counter``. CUDA: ``cuda_timer``, the one CUDA-event timer of the
harness: events recorded on the current stream around the block, read after a
``synchronize`` on the end event, so the time is the device's, not the launch's.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from harness.measure.gpu import Device, require_cuda


class CudaTiming:
    """The events of one ``cuda_timer`` block; ``ms`` is None until the block exits, then
    reading it waits for the end event (so many blocks can be queued and read once)."""

    def __init__(self) -> None:
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)
        self.done = False

    @property
    def ms(self) -> float | None:
        if not self.done:
            return None
        self.end.synchronize()
        return float(self.start.elapsed_time(self.end))


@contextlib.contextmanager
def cuda_timer(device: Device = None, *, sync_before: bool = True, wait: bool = True) -> Iterator[CudaTiming]:
    """Time the enclosed GPU work with CUDA events on the current stream of ``device``.

    ``sync_before`` synchronizes first, so earlier queued work is not billed to the block;
    ``wait`` waits on the end event when the block exits (else the first read of ``.ms``
    does), so ``.ms`` is the device time of everything launched in the block."""
    dev = require_cuda(device)
    out = CudaTiming()
    with torch.cuda.device(dev):
        if sync_before:
            torch.cuda.synchronize(dev)
        out.start.record()
        yield out
        out.end.record()
        out.done = True
        if wait:
            out.end.synchronize()


class Timer:
    """Times a callable on a device; returns milliseconds."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.name = "cuda-events" if self.device.type == "cuda" else "perf_counter"

    def __call__(self, fn: Callable[[], object]) -> float:
        if self.device.type == "cuda":
            with cuda_timer(self.device) as t:
                fn()
            return t.ms
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3


@dataclass
class Samples:
    """Repeated timings (ms) and their summary."""

    values: list[float] = field(default_factory=list)
    timer: str = "perf_counter"

    @property
    def n(self) -> int:
        return len(self.values)

    def quantile(self, q: float) -> float:
        v = sorted(self.values)
        if len(v) == 1:
            return v[0]
        pos = q * (len(v) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(v) - 1)
        return v[lo] + (v[hi] - v[lo]) * (pos - lo)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def spread(self) -> dict[str, float]:
        return {"p10": self.quantile(0.1), "p90": self.quantile(0.9),
                "min": min(self.values), "max": max(self.values),
                "mean": statistics.fmean(self.values),
                "std": statistics.stdev(self.values) if self.n > 1 else 0.0}


def sample(fn: Callable[[], float], *, warmup: int, min_repeats: int, max_repeats: int,
           budget_s: float, timer: str = "perf_counter") -> Samples:
    """Call ``fn`` (which returns one timing in ms) ``warmup`` times unrecorded, then
    repeat until ``budget_s`` of wall time is spent (at least ``min_repeats``, at most
    ``max_repeats``)."""
    for _ in range(warmup):
        fn()
    out = Samples(timer=timer)
    t0 = time.perf_counter()
    while out.n < max_repeats and (out.n < min_repeats or time.perf_counter() - t0 < budget_s):
        out.values.append(fn())
    return out


def sample_paired(fn: Callable[[], float], ref: Callable[[], float], *, warmup: int, min_repeats: int,
                  max_repeats: int, budget_s: float, timer: str = "perf_counter") -> tuple[Samples, Samples]:
    """Interleaved rounds of ``fn`` and ``ref`` (order alternating, ABBA, so neither always
    runs on a warmer cache): round ``i`` of each pairs with round ``i`` of the other, and a
    host that slows down mid-run slows both sides of a round alike. Same budget rules as
    ``sample``, counted in rounds."""
    for _ in range(warmup):
        fn()
        ref()
    a, b = Samples(timer=timer), Samples(timer=timer)
    t0 = time.perf_counter()
    while a.n < max_repeats and (a.n < min_repeats or time.perf_counter() - t0 < budget_s):
        if a.n % 2:
            b.values.append(ref())
            a.values.append(fn())
        else:
            a.values.append(fn())
            b.values.append(ref())
    return a, b
