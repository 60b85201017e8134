"""``timing.cuda_timer``'s bookkeeping on a CPU-only machine, with fake CUDA events (the
real-GPU checks are in tests/kernels/test_kernels_gpu.py)."""
from __future__ import annotations

import contextlib

import pytest
import torch

from harness.measure import kernel_bench, timing


class FakeEvent:
    """Records the order of calls; ``elapsed_time`` only works once the end was waited on."""

    def __init__(self, log: list, enable_timing: bool = False) -> None:
        assert enable_timing
        self.log, self.t, self.waited = log, None, False

    def record(self) -> None:
        self.log.append("record")
        self.t = sum(1 for e in self.log if e == "record")

    def synchronize(self) -> None:
        self.log.append("wait")
        self.waited = True

    def elapsed_time(self, end: FakeEvent) -> float:
        assert end.waited, "elapsed_time read before the end event was waited on"
        return float(end.t - self.t)


@pytest.fixture
def fake_cuda(monkeypatch):
    log: list = []
    monkeypatch.setattr(timing, "require_cuda", lambda device=None: torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "Event", lambda enable_timing=False: FakeEvent(log, enable_timing))
    monkeypatch.setattr(torch.cuda, "device", lambda dev: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda dev=None: log.append("sync"))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    return log


def test_cuda_timer_syncs_before_and_waits_after(fake_cuda):
    with timing.cuda_timer() as t:
        assert t.ms is None  # not before the block is over
        fake_cuda.append("work")
    assert fake_cuda == ["sync", "record", "work", "record", "wait"]
    assert t.ms == 1.0


def test_cuda_timer_can_defer_the_wait(fake_cuda):
    with timing.cuda_timer(sync_before=False, wait=False) as t:
        pass
    assert fake_cuda == ["record", "record"]
    assert t.ms == 1.0 and fake_cuda[-1] == "wait"  # reading waits


def test_timer_on_cuda_uses_cuda_timer(fake_cuda):
    timer = timing.Timer("cuda")
    assert timer.name == "cuda-events"
    assert timer(lambda: fake_cuda.append("work")) == 1.0
    assert fake_cuda[:5] == ["sync", "record", "work", "record", "wait"]


def test_kernel_bench_queues_repetitions_and_reads_after_one_sync(fake_cuda):
    s = kernel_bench.time_events(lambda: fake_cuda.append("launch"), warmup=2, reps=3)
    assert s.n == 3 and s.values == [1.0, 1.0, 1.0] and s.timer == "cuda-events"
    timed = fake_cuda[fake_cuda.index("sync") + 1:]
    assert timed[:9] == ["record", "launch", "record"] * 3  # no sync between repetitions
    assert timed[9] == "sync" and timed[10:] == ["wait"] * 3
