"""Fixtures for kernel tests: interpreter results computed once in a fresh subprocess.

Triton fixes interpreter vs compiled mode at its first import, which in a normal test
process has already happened (transformers imports it), so the CPU-interpreter cases run
in a subprocess with ``TRITON_INTERPRET=1`` set before any import. Under pytest-xdist
the workers share one run through a file lock in the common base temp directory.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def _run_cases() -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONHASHSEED": "0"}
    proc = subprocess.run([sys.executable, str(HERE / "kernel_interp_cases.py")], env=env, cwd=HERE.parent.parent,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"interpreter subprocess failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def interp_results(tmp_path_factory, request) -> dict:
    pytest.importorskip("triton", reason="triton is not installed (the 'gpu'/'dev' extra)")
    if not hasattr(request.config, "workerinput"):  # not an xdist worker
        return _run_cases()
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp().parent
    path = root / "kernel_interp_results.json"
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            return json.loads(path.read_text())
        data = _run_cases()
        path.write_text(json.dumps(data))
        return data
