"""NVML readings (``import pynvml`` from nvidia-ml-py). Every reader returns
``(value, None)`` or ``(None, reason)`` so callers record N/A honestly."""
from __future__ import annotations

import functools
from typing import Any

import torch


@functools.lru_cache(maxsize=1)
def _init() -> str | None:
    try:
        import pynvml
    except ImportError:
        return "nvidia-ml-py (pynvml) is not installed"
    try:
        pynvml.nvmlInit()
    except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return f"NVML unavailable: {e}"
    return None


def unavailable_reason() -> str | None:
    """None when NVML works, else why not."""
    return _init()


def handle(index: int = 0):
    import pynvml

    return pynvml.nvmlDeviceGetHandleByIndex(index)


def _index(device: torch.device | str | int | None) -> int:
    if isinstance(device, int):
        return device
    d = torch.device(device or "cuda")
    return d.index or 0


def memory_used_mb(device=None) -> tuple[float | None, str | None]:
    reason = _init()
    if reason:
        return None, reason
    import pynvml

    return pynvml.nvmlDeviceGetMemoryInfo(handle(_index(device))).used / 2**20, None


def energy_mj(device=None) -> tuple[float | None, str | None]:
    """Total energy counter in millijoules since driver load (Volta and newer)."""
    reason = _init()
    if reason:
        return None, reason
    import pynvml

    try:
        return float(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle(_index(device)))), None
    except pynvml.NVMLError as e:
        return None, f"NVML energy counter not supported: {e}"


def device_info(index: int = 0) -> dict[str, Any]:
    """GPU name, driver, CUDA driver version, clocks, bus width (empty + reason if none)."""
    reason = _init()
    if reason:
        return {"gpu": None, "gpu_reason": reason}
    import pynvml

    h = handle(index)

    def q(fn, *a):
        try:
            v = fn(*a)
            return v.decode() if isinstance(v, bytes) else v
        except Exception:
            return None

    cuda = q(pynvml.nvmlSystemGetCudaDriverVersion)
    return {
        "gpu": q(pynvml.nvmlDeviceGetName, h),
        "gpu_count": q(pynvml.nvmlDeviceGetCount),
        "driver": q(pynvml.nvmlSystemGetDriverVersion),
        "cuda_driver": f"{cuda // 1000}.{cuda % 1000 // 10}" if isinstance(cuda, int) else None,
        "gpu_mem_total_mb": (mem.total / 2**20) if (mem := q(pynvml.nvmlDeviceGetMemoryInfo, h)) else None,
        "sm_clock_max_mhz": q(pynvml.nvmlDeviceGetMaxClockInfo, h, pynvml.NVML_CLOCK_SM),
        "mem_clock_max_mhz": q(pynvml.nvmlDeviceGetMaxClockInfo, h, pynvml.NVML_CLOCK_MEM),
        "mem_bus_width_bits": q(pynvml.nvmlDeviceGetMemoryBusWidth, h),
    }
