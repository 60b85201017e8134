import json

import pytest
import torch

from harness.measure import energy, environment, memory


def test_peak_rss_sees_a_transient_allocation():
    def step():
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB, freed when the step returns
        x += 1
        return float(x[0])

    r = memory.measure_peak_rss(step)
    if r.status == "na":
        pytest.skip(r.reason)
    assert r.extra["step_growth_mb"] >= 60
    assert r.value >= r.extra["rss_before_mb"] + 60


def test_gpu_memory_and_energy_are_na_with_reason_on_cpu():
    recs = memory.measure_gpu_memory(lambda: None, "cpu")
    assert all(r.status == "na" and "no CUDA device" in r.reason for r in recs)
    e = energy.measure_energy(lambda: None, 10, "cpu")
    assert e.status == "na" and "CUDA GPU" in e.reason


def test_fingerprint_and_device_class():
    fp = environment.fingerprint("cpu")
    for key in ("cpu", "cpu_cores", "torch", "transformers", "torch_threads", "gpu"):
        assert key in fp
    json.dumps(fp, default=str)
    cls = environment.device_class("cpu")
    assert cls.startswith("cpu-") and cls.endswith("c") and " " not in cls
    assert len(environment.fingerprint_id("cpu")) == 12


@pytest.mark.gpu
def test_gpu_memory_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine")
    recs = {r.metric: r for r in memory.measure_gpu_memory(lambda: torch.ones(2**20, device="cuda"), "cuda")}
    assert recs["memory.gpu_peak_mb"].value >= 4


def test_step_peak_isolates_what_the_step_allocated():
    """A step that allocates and touches 64 MiB adds about 64 MiB, whatever the process
    already holds (the process peak itself is far larger)."""
    import torch

    from harness.measure.memory import measure_step_memory, reset_peak_rss

    if reset_peak_rss():
        pytest.skip("peak RSS reset is not permitted here")

    def step():
        x = torch.ones(64 * 2**20 // 4, dtype=torch.float32)  # 64 MiB, every page written
        return float(x[::4096].sum())

    recs = {r.metric: r for r in measure_step_memory(step)}
    assert 56 <= recs["memory.step_peak_mb"].value <= 80, recs["memory.step_peak_mb"]
    assert recs["memory.peak_rss_mb"].value > recs["memory.step_peak_mb"].value


def test_model_memory_counts_each_storage_once():
    import torch
    from torch import nn

    from harness.measure.memory import model_resident_mb

    m = nn.Sequential(nn.Embedding(1000, 256), nn.Linear(256, 1000, bias=True))
    m[1].weight = m[0].weight  # tied, as in GPT-2: stored once
    r = model_resident_mb(m)
    assert r.extra["bytes"] == (1000 * 256 + 1000) * 4
    m.half()
    assert model_resident_mb(m).extra["bytes"] == (1000 * 256 + 1000) * 2
    assert torch.isfinite(torch.tensor(r.value))
