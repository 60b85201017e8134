"""The compiled path, checked without a GPU: every kernel compiles for sm_90 (H100) through
Triton's real compiler (the interpreter never runs it), and the W4A16 GEMV's SASS has the
properties its bandwidth depends on."""
from __future__ import annotations

import pytest

triton = pytest.importorskip("triton", reason="triton is not installed")

from harness.kernels import aot  # noqa: E402
from harness.kernels._build import interpreting  # noqa: E402

pytestmark = pytest.mark.skipif(interpreting(), reason="TRITON_INTERPRET=1: triton.jit builds interpreter functions")


@pytest.fixture(scope="module")
def gemv4():
    try:
        return aot.gemv_variant(bits=4, group=128, block_n=64, block_kw=16, num_warps=4)
    except (FileNotFoundError, RuntimeError) as e:  # no bundled ptxas/nvdisasm in this triton build
        pytest.skip(f"cannot compile for sm_90 here: {e}")


def test_w4a16_gemv_weight_loads_are_128_bit(gemv4):
    assert gemv4.facts["loads"].get("v4.b32", 0) >= 1, gemv4.facts["loads"]
    assert not any(k.endswith(("u8", "b8")) for k in gemv4.facts["loads"]), "byte-wise weight loads"


def test_w4a16_gemv_loop_has_no_int_to_float_conversions_or_spills(gemv4):
    ops = gemv4.facts["loop_opcodes"]
    assert "I2F" not in ops and "I2FP" not in ops, ops  # the slow conversion pipe would cap bandwidth
    assert gemv4.facts["spill_store_bytes"] == 0 and gemv4.facts["registers"] <= 128


def test_w4a16_gemv_instructions_per_weight_byte(gemv4):
    bytes_per_thread = 4 * 64 * 16 / (32 * 4)  # BLOCK_N x BLOCK_KW words x 4 B / threads
    per_byte = gemv4.facts["loop_instructions"] / bytes_per_thread
    assert per_byte < 14, f"{per_byte:.1f} SASS instructions per weight byte in the K loop"


def test_w4a16_gemv_split_activation_variant_compiles_lean():
    c = aot.gemv_variant(bits=4, group=128, block_n=128, block_kw=16, num_warps=4, x_split=True)
    assert c.facts["spill_store_bytes"] == 0 and c.facts["loads"].get("v4.b32", 0) >= 1
    assert c.facts["loop_instructions"] / (4 * 128 * 16 / (32 * 4)) < 14


def test_gemm_qlr_and_rx_kernels_compile_for_sm90():
    from harness.kernels.qlr import RX
    from harness.kernels.w4a16 import GEMM

    gemm = aot.compile_variant(
        GEMM, pointers={"x_ptr": "bfloat16", "q_ptr": "uint8", "s_ptr": "float16", "z_ptr": "uint8",
                        "b_ptr": "float16", "y_ptr": "bfloat16"},
        ints={"M": 128, "N": 4096, "K": 4096, "M_BUCKET": 128, "stride_xm": 4096, "stride_qn": 2048,
              "stride_sn": 32, "stride_zn": 32, "stride_ym": 4096},
        constexprs={"BITS": 4, "PER": 2, "GROUP": 128, "HAS_ZEROS": True, "HAS_BIAS": True, "DOT_PRECISION": "tf32",
                    "BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "TILE_IN_GROUP": True}, num_warps=4, num_stages=3)
    assert gemm.facts.get("spill_store_bytes") == 0 and "mma" in gemm.ptx
    rx = aot.compile_variant(
        RX, pointers={"x_ptr": "float16", "r_ptr": "float16", "t_ptr": "float32"},
        ints={"RANK": 64, "K": 4096, "K_PER_SPLIT": 512, "stride_xm": 4096, "stride_rr": 4096, "stride_ts": 64,
              "stride_tm": 64}, constexprs={"BLOCK_R": 32, "BLOCK_K": 128}, num_warps=4)
    assert rx.facts.get("registers")
    from harness.kernels.w4a16 import GEMV

    qlr = aot.compile_variant(
        GEMV, pointers={"x_ptr": "float16", "q_ptr": "int32", "s_ptr": "float16", "z_ptr": "uint8",
                        "b_ptr": "float16", "l_ptr": "float16", "t_ptr": "float32", "y_ptr": "float16"},
        ints={"N": 4096, "KW": 256, "RANK": 64, "T_SPLITS": 8, "stride_xm": 4096, "stride_qn": 256,
              "stride_sn": 32, "stride_zn": 32, "stride_ln": 64, "stride_ts": 64, "stride_tm": 64, "stride_ym": 4096},
        constexprs={"BITS": 2, "CPW": 16, "GROUP": 128, "HAS_ZEROS": True, "HAS_BIAS": False, "HAS_LR": True,
                    "BLOCK_R": 64, "BLOCK_N": 64, "BLOCK_KW": 8, "X_SPLIT": False, "TILE_IN_GROUP": True},
        num_warps=4)
    assert qlr.facts.get("spill_store_bytes") == 0
