"""Ahead-of-time compilation of the kernels for a GPU target, on a machine without a GPU.

The interpreter checks the math but never runs Triton's compiler, so a kernel can pass
every CPU test and still fail to compile, or compile into scalar byte loads that would
never reach the bandwidth target. ``compile_variant`` compiles one kernel variant for a
target (default sm_90, H100) with the same specialisation the JIT applies at launch
(16-byte-aligned pointers, ints divisible by 16 marked so, ints equal to 1 folded), and
``ptx_facts`` reports what can be known statically: global load/store widths, and the
registers and spill bytes ``ptxas -v`` reports. It measures nothing about speed.
"""
from __future__ import annotations

import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.kernels._build import LazyKernel

TORCH_TO_TRITON = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "uint8": "u8", "int32": "i32"}


@dataclass
class Compiled:
    """One compiled variant: its PTX and the static facts about it."""

    name: str
    ptx: str
    cubin: bytes
    arch: int
    facts: dict[str, Any] = field(default_factory=dict)


def compile_variant(kernel: LazyKernel, *, pointers: dict[str, str], ints: dict[str, int],
                    constexprs: dict[str, Any], num_warps: int = 4, num_stages: int = 3, arch: int = 90) -> Compiled:
    """Compile ``kernel`` for ``sm_<arch>``. ``pointers`` maps pointer args to element dtypes
    (torch names), ``ints`` gives example values of int args (for specialisation),
    ``constexprs`` every constexpr including the heuristics' outputs."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend

    jit = triton.jit(kernel.fn)
    sig: dict[str, str] = {}
    consts: dict[str, Any] = dict(constexprs)
    attrs: dict[tuple[int, ...], list] = {}
    for i, name in enumerate(jit.arg_names):
        if name in pointers:
            sig[name] = "*" + TORCH_TO_TRITON[pointers[name]]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in ints:
            v = int(ints[name])
            if v == 1:
                consts[name] = 1
                sig[name] = "constexpr"
            else:
                sig[name] = "i32"
                if v % 16 == 0:
                    attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in consts:
            sig[name] = "constexpr"
        else:
            raise ValueError(f"no value given for kernel argument {name!r} of {kernel.fn.__name__}")
    target = GPUTarget("cuda", arch, 32)
    options = make_backend(target).parse_options({"num_warps": num_warps, "num_stages": num_stages})
    src = ASTSource(fn=jit, signature=sig, constexprs=consts, attrs=attrs)
    k = triton.compile(src, target=target, options=options.__dict__)
    out = Compiled(kernel.fn.__name__, k.asm["ptx"], k.asm["cubin"], arch)
    out.facts = ptx_facts(out.ptx, arch)
    out.facts["shared_bytes"] = getattr(k.metadata, "shared", None)
    out.facts.update(sass_loop_stats(out.cubin))
    return out


def sass_loop_stats(cubin: bytes) -> dict[str, Any]:
    """Instructions in the longest loop body of the SASS (nvdisasm), total and by opcode:
    the per-iteration cost of the K loop, to divide by the bytes one iteration moves."""
    from triton import knobs

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "k.cubin"
        path.write_bytes(cubin)
        proc = subprocess.run([knobs.nvidia.nvdisasm.path, "-c", str(path)], capture_output=True, text=True,
                              check=False)
    if proc.returncode != 0:
        return {"sass_error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    labels: dict[str, int] = {}
    ins: list[str] = []
    for line in proc.stdout.splitlines():
        lab = re.match(r"^\s*\.(L_x_\d+):", line)
        if lab:
            labels[lab.group(1)] = len(ins)
            continue
        op = re.search(r"/\*[0-9a-f]{4}\*/\s+(.*?);", line)
        if op:
            ins.append(op.group(1))
    body: list[str] = []
    for i, text in enumerate(ins):
        br = re.search(r"BRA\s+`?\(?\.?(L_x_\d+)", text)
        if br and br.group(1) in labels and labels[br.group(1)] <= i and i + 1 - labels[br.group(1)] > len(body):
            body = ins[labels[br.group(1)]:i + 1]
    ops = Counter(re.sub(r"^@!?U?P\w+\s+", "", t).split()[0].split(".")[0] for t in body)
    return {"loop_instructions": len(body), "loop_opcodes": dict(ops.most_common())}


def gemv_variant(bits: int = 4, group: int = 128, n: int = 4096, k: int = 4096, block_n: int = 64,
                 block_kw: int = 16, num_warps: int = 4, num_stages: int = 3, dtype: str = "float16",
                 arch: int = 90, x_split: bool = False) -> Compiled:
    """The W4A16/W8A16 GEMV (symmetric, no bias) compiled as a launch with these sizes would be."""
    from harness.kernels.w4a16 import GEMV

    cpw = 32 // bits
    kw = k * bits // 32
    pointers = {"x_ptr": dtype, "q_ptr": "int32", "s_ptr": "float16", "z_ptr": "uint8", "b_ptr": "float16",
                "l_ptr": "float16", "t_ptr": "float32", "y_ptr": dtype}
    ints = {"N": n, "KW": kw, "RANK": 0, "T_SPLITS": 1, "stride_xm": k, "stride_qn": kw, "stride_sn": k // group,
            "stride_zn": k // group, "stride_ln": 16, "stride_ts": 16, "stride_tm": 16, "stride_ym": n}
    consts = {"BITS": bits, "CPW": cpw, "GROUP": group, "HAS_ZEROS": False, "HAS_BIAS": False, "HAS_LR": False,
              "BLOCK_R": 16, "BLOCK_N": block_n, "BLOCK_KW": block_kw, "X_SPLIT": x_split,
              "TILE_IN_GROUP": group % (block_kw * cpw) == 0}
    return compile_variant(GEMV, pointers=pointers, ints=ints, constexprs=consts, num_warps=num_warps,
                           num_stages=num_stages, arch=arch)


def ptx_facts(ptx: str, arch: int = 90) -> dict[str, Any]:
    """Global load/store instruction counts by width, and ptxas registers/spills."""
    loads = Counter(re.findall(r"\bld\.global(?:\.\w+)*?\.(v[248]\.)?([bfsu]\d+)", ptx))
    stores = Counter(re.findall(r"\bst\.global(?:\.\w+)*?\.(v[248]\.)?([bfsu]\d+)", ptx))

    def widths(c: Counter) -> dict[str, int]:
        return {f"{(v or 'v1.').rstrip('.')}.{t}": n for (v, t), n in sorted(c.items())}

    facts: dict[str, Any] = {"loads": widths(loads), "stores": widths(stores)}
    facts.update(ptxas_usage(ptx, arch))
    return facts


def ptxas_usage(ptx: str, arch: int = 90) -> dict[str, Any]:
    """Registers and spill bytes from ``ptxas -v`` (the binary Triton bundles)."""
    from triton.backends.nvidia.compiler import get_ptxas

    suffix = "a" if arch >= 90 else ""
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "k.ptx"
        src.write_text(ptx)
        proc = subprocess.run([get_ptxas(arch).path, "-v", f"--gpu-name=sm_{arch}{suffix}", str(src), "-o",
                               str(Path(d) / "k.cubin")], capture_output=True, text=True, check=False)
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        return {"ptxas_error": text.strip().splitlines()[-1] if text.strip() else f"exit {proc.returncode}"}
    regs = re.search(r"Used (\d+) registers", text)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    return {"registers": int(regs.group(1)) if regs else None,
            "spill_store_bytes": int(spill.group(1)) if spill else None,
            "spill_load_bytes": int(spill.group(2)) if spill else None}


__all__ = ["Compiled", "compile_variant", "ptx_facts", "ptxas_usage", "sass_loop_stats", "gemv_variant",
           "gemv_static_table"]


def gemv_static_table(bits: int = 4, group: int = 128, n: int = 4096, k: int = 4096, arch: int = 90) -> str:
    """Markdown: every autotune config of the GEMV compiled for ``sm_<arch>``, with its
    registers, spills, load widths and SASS instructions per weight byte in the K loop."""
    from harness.kernels.w4a16 import _GEMV_CONFIGS

    lines = [("| BLOCK_N | BLOCK_KW | X_SPLIT | warps | stages | registers | spill B | global loads (count x width) | "
              "K-loop SASS instr | instr / weight byte |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for kw, warps, stages in _GEMV_CONFIGS:
        if kw["X_SPLIT"] and bits != 4:
            continue
        c = gemv_variant(bits, group, n, k, kw["BLOCK_N"], kw["BLOCK_KW"], warps, stages, arch=arch,
                         x_split=kw["X_SPLIT"])
        f = c.facts
        per_thread = 4 * kw["BLOCK_N"] * kw["BLOCK_KW"] / (32 * warps)
        loop = f.get("loop_instructions") or 0
        loads = ", ".join(f"{n_}x {w}" for w, n_ in f["loads"].items())
        lines.append(f"| {kw['BLOCK_N']} | {kw['BLOCK_KW']} | {kw['X_SPLIT']} | {warps} | {stages} | "
                     f"{f.get('registers')} | {f.get('spill_store_bytes')} | {loads} | {loop} | "
                     f"{loop / per_thread:.1f} |")
    return "\n".join(lines)
