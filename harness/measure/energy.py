"""Energy per generated token from NVML's total-energy counter (GPU only).

The counter (millijoules, Volta+) is read before and after a decode run; the delta
divided by the tokens generated is J/token. On CPU there is no comparable counter
here, so the record is N/A with the reason.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from harness.measure import gpu
from harness.records import Record


def measure_energy(step: Callable[[], object], tokens: int, device: torch.device | str) -> Record:
    """Run ``step`` (which generates ``tokens`` tokens) and record J/token."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return Record.na("energy.j_per_token", f"NVML energy needs a CUDA GPU (measured on {dev.type})")
    if tokens <= 0:
        raise ValueError(f"tokens={tokens} must be > 0")
    start, reason = gpu.energy_mj(dev)
    if reason:
        return Record.na("energy.j_per_token", reason)
    torch.cuda.synchronize(dev)
    step()
    torch.cuda.synchronize(dev)
    end, _ = gpu.energy_mj(dev)
    delta_j = (end - start) / 1e3
    if delta_j <= 0:
        return Record.na("energy.j_per_token",
                         "NVML energy counter did not advance (run too short for its resolution)")
    return Record("energy.j_per_token", delta_j / tokens, extra={"energy_j": delta_j, "tokens": tokens})
