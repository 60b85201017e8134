"""Every Triton kernel against its torch reference on small shapes, under TRITON_INTERPRET=1.

The cases (kernel_interp_cases.CASES) cover 2/4/8-bit packed weights, symmetric and
asymmetric zeros, both scale paths, GEMV and GEMM, ragged N/K, bias, 3-D inputs, fp32
activations, CALDERA's fused Q + L R, QuantLinear's own buffers, and a negative control.
"""
from __future__ import annotations

import pytest
from kernel_interp_cases import CASES


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
