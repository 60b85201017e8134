"""Energy per generated token from NVML's total-energy counter (GPU only).

NVML's counter (millijoules since driver load, Volta+) moves in steps: the driver refreshes
it every 20-100 ms, so one short decode run can read a delta of zero, or one refresh
period's worth of energy that the run did not spend. The step is therefore repeated
until the window between the two reads lasts at least ``MIN_WINDOW_S`` (1 s), and the
record carries that window (``extra.window_s``, ``repeats``, ``tokens``, ``energy_j``,
``mean_power_w``). A window that could not reach the minimum, or a counter that did not
advance over it, is N/A with the reason: a short kernel's zero is never reported.
On CPU there is no comparable counter here, so the record is N/A with the reason.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import torch

from harness.measure import gpu
from harness.records import Record

METRIC = "energy.j_per_token"
MIN_WINDOW_S = 1.0   # >= 10 refresh periods of the counter at its slowest (100 ms)
MAX_REPEATS = 10_000  # a step too fast to fill the window in this many repeats is N/A


def measure_energy(step: Callable[[], object], tokens: int, device: torch.device | str, *,
                   min_window_s: float = MIN_WINDOW_S) -> Record:
    """Repeat ``step`` (which generates ``tokens`` tokens) for at least ``min_window_s``
    between two NVML counter reads and record J/token over that window."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return Record.na(METRIC, f"NVML energy needs a CUDA GPU (measured on {dev.type})")
    if tokens <= 0:
        raise ValueError(f"tokens={tokens} must be > 0")
    _, reason = gpu.energy_mj(dev)
    if reason:
        return Record.na(METRIC, reason)
    return energy_over_window(step, tokens, read_mj=lambda: gpu.energy_mj(dev)[0],
                              sync=lambda: torch.cuda.synchronize(dev), min_window_s=min_window_s)


def energy_over_window(step: Callable[[], object], tokens: int, *, read_mj: Callable[[], float | None],
                       sync: Callable[[], object], clock: Callable[[], float] = time.perf_counter,
                       min_window_s: float = MIN_WINDOW_S, max_repeats: int = MAX_REPEATS) -> Record:
    """The counter logic, free of CUDA: ``read_mj`` reads the counter (mJ), ``sync`` waits
    for queued GPU work, ``clock`` is the wall clock of the window."""
    sync()
    start_mj, t0 = read_mj(), clock()
    repeats, elapsed = 0, 0.0
    while elapsed < min_window_s and repeats < max_repeats:
        step()
        sync()
        repeats += 1
        elapsed = clock() - t0
    end_mj = read_mj()
    window = {"window_s": elapsed, "repeats": repeats, "tokens": tokens * repeats, "min_window_s": min_window_s}
    if start_mj is None or end_mj is None:
        return Record.na(METRIC, "NVML energy counter could not be read", extra=window)
    if elapsed < min_window_s:
        return Record.na(METRIC, (f"energy window {elapsed:.3f} s after {repeats} repeats is under the "
                                  f"{min_window_s:g} s minimum (NVML's counter updates every 20-100 ms)"),
                         extra=window)
    delta_j = (end_mj - start_mj) / 1e3
    if delta_j <= 0:
        return Record.na(METRIC, (f"NVML energy counter did not advance over a {elapsed:.3f} s window "
                                  f"({repeats} repeats)"), extra=window)
    return Record(METRIC, delta_j / window["tokens"],
                  extra={**window, "energy_j": delta_j, "mean_power_w": delta_j / elapsed})
