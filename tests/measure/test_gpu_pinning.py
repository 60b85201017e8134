"""One GPU per pytest-xdist worker (device count mocked: this host may have none), the
fingerprint naming it, and NVML readings that follow the pinned device."""
from __future__ import annotations

import json
import os

import pytest

from harness.measure import environment, gpu
from harness.measure.environment import PINNED_ENV, fingerprint, pin_worker_gpu

pytest_plugins = ["pytester"]


@pytest.mark.parametrize("worker, env, count, want", [
    ("gw0", {}, 4, "0"),
    ("gw3", {}, 4, "3"),
    ("gw5", {}, 4, "1"),                                 # more workers than GPUs: round robin
    ("gw1", {"CUDA_VISIBLE_DEVICES": "2,5"}, None, "5"),  # only the GPUs this job was given
    ("gw2", {"CUDA_VISIBLE_DEVICES": "GPU-a,GPU-b"}, None, "GPU-a"),
    ("gw0", {}, 1, None),                                # one GPU: nothing to share out
    ("gw0", {"CUDA_VISIBLE_DEVICES": ""}, None, None),   # none visible
    ("main", {}, 4, None),                               # not an xdist worker
])
def test_pin_worker_gpu(worker, env, count, want):
    env = dict(env)
    before = dict(env)
    assert pin_worker_gpu(worker, env, count) == want
    if want is None:
        assert env == before
    else:
        assert env["CUDA_VISIBLE_DEVICES"] == want and env[PINNED_ENV] == want


def test_fingerprint_records_the_pinned_gpu(monkeypatch):
    monkeypatch.setattr(environment, "gpu_count", lambda: 8)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(environment.torch.cuda, "is_initialized", lambda: False)
    try:
        assert pin_worker_gpu("gw6") == "6"
        fp = fingerprint("cpu")
        assert fp["pinned_gpu"] == "6" and fp["cuda_visible_devices"] == "6"
    finally:
        os.environ.pop(PINNED_ENV, None)
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        fingerprint.cache_clear()


def test_nvml_handle_follows_cuda_visible_devices(monkeypatch):
    calls = []

    class FakeNvml:
        @staticmethod
        def nvmlDeviceGetHandleByIndex(i):
            calls.append(("index", i))

        @staticmethod
        def nvmlDeviceGetHandleByUUID(u):
            calls.append(("uuid", u))

    monkeypatch.setitem(__import__("sys").modules, "pynvml", FakeNvml)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,GPU-x")
    gpu.nvml_handle(0)
    gpu.nvml_handle(1)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    gpu.nvml_handle(0)
    assert calls == [("index", 3), ("uuid", "GPU-x"), ("index", 0)]


def test_each_xdist_worker_pins_its_own_gpu(pytester, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    pytester.makeconftest("""
        import harness.measure.environment as env
        env.gpu_count = lambda: 4  # a 4-GPU host, mocked
    """)
    pytester.makepyfile(test_default="""
        import os
        import pytest
        @pytest.mark.parametrize("i", range(4))
        def test_cell(bench, i):
            bench.record("size.bytes", float(os.environ["CUDA_VISIBLE_DEVICES"]))
    """)
    r = pytester.runpytest_subprocess("-n", "2", "--harness-out", "run", "--harness-device", "auto",
                                      "-p", "no:cacheprovider")
    r.assert_outcomes(passed=4)
    out = pytester.path / "run"
    pinned = {p.name: json.loads(p.read_text())["pinned_gpu"] for p in out.glob("fingerprint-*.json")}
    assert pinned == {"fingerprint-gw0.json": "0", "fingerprint-gw1.json": "1"}
    from harness.records import load_records

    by_worker = {}
    for rec in load_records(out):
        by_worker.setdefault(rec.device, set()).add(rec.value)
    assert sorted(map(sorted, by_worker.values())) == [[0.0], [1.0]]  # each worker saw only its GPU
