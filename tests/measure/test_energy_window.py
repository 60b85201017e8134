"""NVML energy over a window of >= 1 s, on a fake counter that refreshes like NVML's (no GPU)."""
from __future__ import annotations

import time

import pytest

from harness.measure import energy


class FakeGPU:
    """A fake clock and an NVML-like energy counter: ``power_w`` drawn while a step runs,
    ``idle_w`` otherwise, the readable value refreshed only every ``refresh_s``."""

    def __init__(self, power_w: float = 300.0, step_s: float = 0.010, refresh_s: float = 0.050,
                 idle_w: float = 300.0):
        self.t, self.true_j = 0.0, 0.0
        self.power_w, self.step_s, self.refresh_s, self.idle_w = power_w, step_s, refresh_s, idle_w
        self.steps = 0
        self._shown_j, self._shown_at = 0.0, 0.0

    def _advance(self, dt: float, watts: float) -> None:
        self.t += dt
        self.true_j += dt * watts
        periods = int(self.t / self.refresh_s)
        if periods * self.refresh_s > self._shown_at:  # the driver refreshed the counter
            self._shown_at = periods * self.refresh_s
            self._shown_j = self.true_j - (self.t - self._shown_at) * watts

    def step(self) -> None:
        self.steps += 1
        self._advance(self.step_s, self.power_w)

    def clock(self) -> float:
        return self.t

    def read_mj(self) -> float:
        return self._shown_j * 1e3

    def sync(self) -> None:
        self._advance(1e-6, self.idle_w)


def _measure(g: FakeGPU, tokens: int = 8, **kw):
    return energy.energy_over_window(g.step, tokens, read_mj=g.read_mj, sync=g.sync, clock=g.clock, **kw)


def test_short_step_is_repeated_for_at_least_one_second_and_the_window_recorded():
    g = FakeGPU(power_w=300.0, step_s=0.010)
    r = _measure(g, tokens=8)
    assert r.status == "ok"
    assert r.extra["window_s"] >= 1.0 and r.extra["min_window_s"] == 1.0
    assert r.extra["repeats"] == g.steps >= 100
    assert r.extra["tokens"] == 8 * g.steps
    true_j_per_token = 300.0 * 0.010 / 8
    # one refresh period (50 ms) of error at most over >= 1 s: within 5% + 1 period
    assert r.value == pytest.approx(true_j_per_token, rel=0.06)
    assert r.extra["mean_power_w"] == pytest.approx(300.0, rel=0.06)


def test_a_single_short_run_would_have_read_zero():
    """What the old single-run read did: a 10 ms step between two reads of a 50 ms counter."""
    g = FakeGPU(step_s=0.010)
    before = g.read_mj()
    g.step()
    assert g.read_mj() - before == 0.0  # the zero a short kernel reports; the window never does
    r = _measure(FakeGPU(step_s=0.010))
    assert r.status == "ok" and r.value > 0


def test_a_long_step_needs_one_repeat():
    g = FakeGPU(step_s=2.5)
    r = _measure(g, tokens=64)
    assert r.status == "ok" and r.extra["repeats"] == 1
    assert r.value == pytest.approx(300.0 * 2.5 / 64, rel=0.03)


def test_window_below_the_minimum_is_na_with_the_reason():
    g = FakeGPU(step_s=0.001)
    r = _measure(g, max_repeats=50)  # 50 ms: cannot fill the window
    assert r.status == "na" and r.value is None
    assert "under the 1 s minimum" in r.reason and "50 repeats" in r.reason
    assert r.extra["window_s"] == pytest.approx(0.05, rel=0.01)


def test_counter_that_does_not_advance_is_na_never_zero():
    g = FakeGPU()
    r = energy.energy_over_window(g.step, 8, read_mj=lambda: 123456.0, sync=g.sync, clock=g.clock)
    assert r.status == "na" and "did not advance" in r.reason and r.extra["window_s"] >= 1.0


def test_unreadable_counter_is_na():
    g = FakeGPU()
    r = energy.energy_over_window(g.step, 8, read_mj=lambda: None, sync=g.sync, clock=g.clock)
    assert r.status == "na" and "could not be read" in r.reason


def test_measure_energy_wires_nvml_and_cuda_sync(monkeypatch):
    """measure_energy on 'cuda' reads gpu.energy_mj and syncs the device (both faked), on
    the real wall clock with a short minimum window."""
    t0 = time.perf_counter()
    monkeypatch.setattr(energy.gpu, "energy_mj",
                        lambda dev: (round((time.perf_counter() - t0) / 0.005) * 0.005 * 200.0 * 1e3, None))
    syncs = []
    monkeypatch.setattr(energy.torch.cuda, "synchronize", lambda dev=None: syncs.append(dev))
    r = energy.measure_energy(lambda: time.sleep(0.002), 4, "cuda", min_window_s=0.05)
    assert r.status == "ok" and r.extra["window_s"] >= 0.05
    assert r.extra["mean_power_w"] == pytest.approx(200.0, rel=0.3)
    assert len(syncs) == r.extra["repeats"] + 1


def test_measure_energy_na_when_nvml_is_missing(monkeypatch):
    monkeypatch.setattr(energy.gpu, "energy_mj", lambda dev: (None, "NVML unavailable: no driver"))
    r = energy.measure_energy(lambda: None, 4, "cuda")
    assert r.status == "na" and r.reason == "NVML unavailable: no driver"
