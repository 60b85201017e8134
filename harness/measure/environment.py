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

PINNED_ENV = "HARNESS_PINNED_GPU"


def gpu_count() -> int:
    """GPUs this process may use, counted without initializing CUDA (NVML, narrowed by
    CUDA_VISIBLE_DEVICES), so a device can still be pinned afterwards."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([v for v in visible.split(",") if v.strip() and not v.strip().startswith("-")])
    if gpu.nvml_unavailable_reason():
        return 0
    import pynvml

    return int(pynvml.nvmlDeviceGetCount())


def pin_worker_gpu(worker: str, env: dict[str, str] | None = None, count: int | None = None) -> str | None:
    """One GPU per pytest-xdist worker: ``gw<k>`` gets visible GPU ``k mod count`` through
    ``CUDA_VISIBLE_DEVICES`` (so it must run before CUDA is initialized; if it already is,
    ``torch.cuda.set_device`` instead). Returns the GPU chosen (its id as the host names
    it), or None when there is nothing to pin (not a worker, fewer than two GPUs). The
    choice is kept in ``HARNESS_PINNED_GPU`` for the fingerprint."""
    env = os.environ if env is None else env
    m = re.fullmatch(r"gw(\d+)", worker or "")
    if not m:
        return None
    k = int(m.group(1))
    visible = [v.strip() for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    n = count if count is not None else (len(visible) if "CUDA_VISIBLE_DEVICES" in env else gpu_count())
    if n < 2:
        return None
    choice = visible[k % len(visible)] if visible else str(k % n)
    if torch.cuda.is_initialized():
        torch.cuda.set_device(k % n)
    else:
        env["CUDA_VISIBLE_DEVICES"] = choice
    env[PINNED_ENV] = choice
    fingerprint.cache_clear()
    return choice


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_id() -> str | None:
    """``vendor family F model M stepping S`` from /proc/cpuinfo: virtual machines often name
    every EPYC or Xeon generation alike ("AMD EPYC"), while these numbers still tell them apart."""
    keys = {"vendor_id": "", "cpu family": "family", "model": "model", "stepping": "stepping"}
    got: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                k = k.strip()
                if k in keys and k not in got:
                    got[k] = v.strip()
                if not line.strip() and got:
                    break
    except OSError:
        return None
    return " ".join(f"{keys[k]} {got[k]}".strip() for k in keys if k in got) or None


def _cpu_capability() -> str | None:
    """The SIMD level torch dispatches its CPU kernels for (e.g. ``AVX2``, ``AVX512``): int8 and
    bf16 kernels differ several-fold between them on hosts of the same name."""
    try:
        return torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        return None


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
        "cpu_id": _cpu_id(),
        "cpu_capability": _cpu_capability(),
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
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "pinned_gpu": os.environ.get(PINNED_ENV),  # set by pin_worker_gpu: which GPU this worker owns
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


def write_fingerprint(path, device: str = "cpu") -> None:
    """The fingerprint, device class and fingerprint id as one JSON file (what each xdist
    worker leaves in the run directory: its own view, e.g. its pinned GPU)."""
    from pathlib import Path

    from harness.paths import atomic_write

    atomic_write(Path(path), json.dumps(dict(fingerprint(device), device_class=device_class(device),
                                             fingerprint_id=fingerprint_id(device)), default=str, indent=1))
