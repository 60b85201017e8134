"""Memory of a measured step.

CPU: the step's peak resident set, by ``harness.peakmem``: Linux's per-process high-water
mark (VmHWM) reset just before the step (after glibc gives back its free heap pages), so
the mark is exactly the peak *during the step* (weights already resident + activations +
temporaries). ``extra`` holds the RSS before the step and the
step's growth over it. Where the reset is not permitted the record is N/A with the
reason (a mark carried over from earlier work would overstate the peak).
GPU: ``torch.cuda.max_memory_allocated`` after a reset, and NVML's device memory used.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from harness import peakmem
from harness.measure import gpu
from harness.records import Record


def reset_peak_rss() -> str | None:
    """Trim the heap and reset VmHWM to the current RSS; returns a reason string if it cannot."""
    return peakmem.reset_peak()


def current_rss_mb() -> float | None:
    return peakmem.current_rss_mb()


def measure_peak_rss(step: Callable[[], object]) -> Record:
    """Run ``step`` once and record its peak RSS (MiB)."""
    return measure_step_memory(step)[0]


def measure_step_memory(step: Callable[[], object]) -> list[Record]:
    """Run ``step`` once on the CPU: ``memory.peak_rss_mb`` (the process's peak while it ran:
    interpreter, libraries, every loaded model, plus the step) and ``memory.step_peak_mb``
    (that peak minus the RSS just before the step, after the heap trim: what the step itself
    added on top of what was live: activations, KV cache, temporaries)."""
    with peakmem.PeakTracker() as t:
        step()
    if t.reason:
        return [Record.na("memory.peak_rss_mb", t.reason), Record.na("memory.step_peak_mb", t.reason)]
    how = {"isolation": peakmem.ISOLATION, "rss_before_mb": t.before_mb}
    return [Record("memory.peak_rss_mb", t.peak_mb, extra={**how, "step_growth_mb": t.added_mb}),
            Record("memory.step_peak_mb", t.added_mb, extra=how)]


def cuda_step_peak(step: Callable[[], object], device: torch.device | str) -> Record:
    """``memory.step_peak_mb`` on a CUDA device: peak allocated during ``step`` minus what
    was allocated before it."""
    dev = torch.device(device)
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    before = torch.cuda.memory_allocated(dev)
    step()
    torch.cuda.synchronize(dev)
    return Record("memory.step_peak_mb", (torch.cuda.max_memory_allocated(dev) - before) / 2**20,
                  extra={"isolation": "torch.cuda peak allocated minus allocated before the step"})


def model_resident_mb(model: torch.nn.Module) -> Record:
    """``memory.model_mb``: bytes of every parameter and buffer the model holds in memory,
    each storage counted once (tied and shared tensors are not double counted). Packed
    formats count their packed bytes; this is what the weights occupy, not the file size."""
    seen: dict[int, int] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        st = t.untyped_storage()
        seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
    nbytes = sum(seen.values())
    return Record("memory.model_mb", nbytes / 2**20, extra={"bytes": nbytes, "storages": len(seen)})


def measure_gpu_memory(step: Callable[[], object], device: torch.device | str) -> list[Record]:
    """torch peak allocated and NVML used memory around ``step`` on a CUDA device."""
    dev = torch.device(device)
    if dev.type != "cuda":
        reason = f"no CUDA device (measured on {dev.type})"
        step()
        return [Record.na("memory.gpu_peak_mb", reason), Record.na("memory.nvml_used_mb", reason)]
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    step()
    torch.cuda.synchronize(dev)
    recs = [Record("memory.gpu_peak_mb", torch.cuda.max_memory_allocated(dev) / 2**20)]
    used, reason = gpu.memory_used_mb(dev)
    recs.append(Record("memory.nvml_used_mb", used) if reason is None else
                Record.na("memory.nvml_used_mb", reason))
    return recs


def cache_nbytes(cache) -> int:
    """Bytes a KV cache really holds: its own ``nbytes()`` when it stores a compact format
    (the quantized cache counts packed codes, scales and zeros), else the dense key/value
    tensors of every layer (transformers' DynamicCache)."""
    if cache is None:
        return 0
    if callable(getattr(cache, "nbytes", None)):
        return int(cache.nbytes())
    total = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def measure_kv_cache(model: torch.nn.Module, ids: torch.Tensor, n_tokens: int, cache_factory=None) -> Record:
    """``memory.kv_cache_mb``: bytes held by the KV cache after prefilling ``ids`` and
    greedily decoding ``n_tokens`` (the same prompt and length as the latency step; the
    last generated token is never fed back, so the cache holds prompt + n - 1 positions)."""
    from harness.measure.latency import decode_with_cache

    _, cache = decode_with_cache(model, ids, n_tokens, cache_factory)
    nbytes = cache_nbytes(cache)
    if nbytes == 0:
        return Record.na("memory.kv_cache_mb", f"the model returned no KV cache ({type(cache).__name__})")
    return Record("memory.kv_cache_mb", nbytes / 2**20,
                  extra={"bytes": nbytes, "cache": type(cache).__name__, "batch": int(ids.shape[0]),
                         "tokens": int(cache.get_seq_length()) if hasattr(cache, "get_seq_length")
                         else int(ids.shape[1]) + n_tokens - 1})
