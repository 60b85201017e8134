"""Every Triton kernel against its torch reference on small shapes, under TRITON_INTERPRET=1.

The cases (kernel_interp_cases.CASES) cover 2/4/8-bit packed weights, symmetric and
asymmetric zeros, both scale paths, GEMV and GEMM, ragged N/K, bias, 3-D inputs, fp32
activations, CALDERA's fused Q + L R, QuantLinear's own buffers, and a negative control.

Triton fixes interpreter vs compiled mode at its first import, which in a normal test
process has already happened (transformers imports it), so the cases run in a subprocess
with ``TRITON_INTERPRET=1`` set before any import. Under pytest-xdist the workers share
one run through a file lock in the common base temp directory. (The fixture lives here,
not in a conftest.py: the suite imports the root conftest as a plain ``conftest`` module.)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kernel_interp_cases import CASES

HERE = Path(__file__).parent


def _run_cases() -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONHASHSEED": "0"}
    proc = subprocess.run([sys.executable, str(HERE / "kernel_interp_cases.py")], env=env, cwd=HERE.parent.parent,
                          capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"interpreter subprocess failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def interp_results(tmp_path_factory, request) -> dict:
    pytest.importorskip("triton", reason="triton is not installed (the 'gpu'/'dev' extra)")
    if not hasattr(request.config, "workerinput"):  # not an xdist worker
        return _run_cases()
    from filelock import FileLock

    path = tmp_path_factory.getbasetemp().parent / "kernel_interp_results.json"
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            return json.loads(path.read_text())
        data = _run_cases()
        path.write_text(json.dumps(data))
        return data


@pytest.mark.parametrize("cid", list(CASES))
def test_kernel_matches_reference(cid, interp_results):
    res = interp_results[cid]
    assert "error" not in res, f"{cid}: {res['error']}\n{res.get('trace', '')}"
    if res["expect_fail"]:
        assert res["err"] > 100 * res["tol"], f"{cid}: corrupted input went unnoticed (err {res['err']:.2e})"
    else:
        assert res["err"] <= res["tol"], f"{cid}: max rel err {res['err']:.2e} > tol {res['tol']:.0e}"


def test_every_case_ran(interp_results):
    assert sorted(interp_results) == sorted(CASES)
