"""Environment fingerprint and device class.

The fingerprint says what produced a number (CPU model and cores, GPU, driver, CUDA,
library versions, threads). The *device class* is the part that makes numbers
comparable: baselines are stored per class and never compared across classes.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import re
from typing import Any

import torch

from harness.measure import gpu


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(pkg: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def _slug(s: str) -> str:
    s = re.sub(r"\(r\)|\(tm\)|cpu|@.*$|processor", "", s.lower())
    return re.sub(r"[^a-z0-9]+", "-", s).strip("-")[:48]


@functools.lru_cache(maxsize=4)
def fingerprint(device: str = "cpu") -> dict[str, Any]:
    """What produced the numbers. Cheap; cached per device."""
    dev = torch.device(device)
    fp: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "machine": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "transformers": _version("transformers"),
        "harness": _version("llm-compression-harness"),
        "triton": _version("triton"),
        "device": dev.type,
        "cuda_available": torch.cuda.is_available(),
        "cuda_runtime": torch.version.cuda,
    }
    if torch.cuda.is_available():
        idx = dev.index or 0 if dev.type == "cuda" else 0
        fp.update(gpu.nvml_device_info(idx))
        fp["gpu_torch_name"] = torch.cuda.get_device_name(idx)
        fp["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability(idx)))
    else:
        fp["gpu"] = None
        fp["gpu_reason"] = "torch.cuda.is_available() is False"
    return fp


def device_class(device: str = "cpu") -> str:
    """Comparable-hardware key, e.g. ``cpu-intel-xeon-platinum-8481c-2c`` or ``cuda-nvidia-h100``."""
    fp = fingerprint(device)
    if fp["device"] == "cuda" and fp.get("gpu_torch_name"):
        return "cuda-" + _slug(fp["gpu_torch_name"])
    cores = fp.get("cpu_affinity") or fp.get("cpu_cores")
    return f"cpu-{_slug(fp['cpu'])}-{cores}c"


def fingerprint_id(device: str = "cpu") -> str:
    """Short hash of the full fingerprint (stored in every record)."""
    blob = json.dumps(fingerprint(device), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
