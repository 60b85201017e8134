"""docs/results/gpu.md from one ``make gpu-check`` (scripts/gpu_check.py calls this last).

    python scripts/gpu_report.py --summary OUT/summary.json --run WORK/run --kernels OUT/gpu-results.md \
        --out OUT/gpu.md [--docs docs/results/gpu.md]

Reads the check's summary (steps, device, probe), the run directory's records (harness run
--quick --device cuda) and the kernel page (benchmarks/bench_kernels.py --quick). Whatever is
missing (a step failed or hit the deadline) is said, never estimated.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

SUITE_METRICS = [("latency.decode_tok_s", "decode tok/s"), ("latency.prefill_ms", "prefill ms"),
                 ("memory.gpu_peak_mb", "torch peak MiB"), ("memory.nvml_used_mb", "NVML MiB"),
                 ("energy.j_per_token", "J/token")]
W4A16 = "rtn:bits=4,group=128"


def canonical(spec: str) -> str:
    """The spec as records store it (defaults dropped: ``rtn:bits=4,group=128`` -> ``rtn:group=128``)."""
    try:
        from harness.techniques.spec import canonical_spec

        return canonical_spec(spec)
    except Exception:
        return spec


def _fmt(r, nd: str = ".4g") -> str:
    if r is None:
        return "-"
    if r.value is None:
        reason = (r.reason or "").replace("|", "/")
        return f"N/A ({reason[:90]}{'...' if len(reason) > 90 else ''})"
    return format(r.value, nd)


def _f(v, nd: str = ".1f") -> str:
    return "N/A" if v is None else format(v, nd)


def header(summary: dict) -> list[str]:
    d = summary.get("facts", {}).get("device", {}) or {}
    name = d.get("gpu") or d.get("torch_name") or "an unknown GPU"
    if summary.get("dry"):
        return ["# GPU check: the harness on a CUDA GPU", "",
                (f"**Rehearsal only** (`make gpu-check-dry`, Python {summary.get('python')}, "
                 f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC): the steps up to the first CUDA call. "
                 "Nothing below was measured on a GPU."), ""]
    if not d.get("cuda_ok", True) or "error" in d:
        return ["# GPU check: the harness on a CUDA GPU", "",
                (f"**No CUDA GPU was usable** in this run ({dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, "
                 f"torch {d.get('torch')}, Python {summary.get('python')}): nothing below was measured."), ""]
    return ["# GPU check: the harness on a CUDA GPU", "",
            (f"Measured by `make gpu-check` (scripts/gpu_check.py) on **{name}**, "
             f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, in {summary.get('elapsed_s')} s of a "
             f"{summary.get('deadline_s')} s deadline. Driver {d.get('driver')}, CUDA driver {d.get('cuda_driver')}, "
             f"torch {d.get('torch')} (CUDA runtime {d.get('cuda_runtime')}), SM clock max {d.get('sm_clock_max_mhz')} "
             f"MHz, memory clock max {d.get('mem_clock_max_mhz')} MHz, bus {d.get('mem_bus_width_bits')} bit, "
             f"power limit {d.get('power_limit_w')} W; Python {summary.get('python')}."), ""]


def steps(summary: dict) -> list[str]:
    out = ["## Steps", "", "| step | status | wall s | note |", "|---|---|---|---|"]
    for s in summary.get("steps", []):
        out.append(f"| {s['name']} | {s['status']} | {s['wall_s']} | {(s.get('note') or '').replace('|', '/')} |")
    return out + [""]


def gpu_tests(junit: Path) -> list[str]:
    out = ["## @pytest.mark.gpu tests", ""]
    if not junit.exists():
        return out + ["Not run (no pytest-gpu.xml): see the steps table.", ""]
    root = ET.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    out.append(f"{n['tests']} tests: {n['tests'] - n['failures'] - n['errors'] - n['skipped']} passed, "
               f"{n['failures']} failed, {n['errors']} errors, {n['skipped']} skipped.")
    for case in suite.iter("testcase"):
        for kind in ("failure", "error", "skipped"):
            el = case.find(kind)
            if el is not None:
                msg = (el.get("message") or "").splitlines()[0][:160] if el.get("message") else ""
                out.append(f"- {kind}: `{case.get('classname')}::{case.get('name')}` {msg}")
    return out + [""]


def load_suite(run: Path) -> tuple[dict, str]:
    """{(model, spec): {metric: Record}} and a note (why it is empty)."""
    try:
        from harness.records import load_records

        recs = load_records(run, skip_bad_lines=True)
    except Exception as e:  # no run directory, no records: say so
        return {}, f"{type(e).__name__}: {e}"
    cells: dict = {}
    for r in recs:
        cells.setdefault((r.model, r.spec), {})[r.metric] = r
    return cells, ""


def suite_table(cells: dict, note: str) -> list[str]:
    out = ["## harness run --quick --device cuda", ""]
    if not cells:
        return out + [f"No records: {note or 'the suite step did not run'}.", ""]
    out += ["CUDA-event latency (the record's timer is named), torch peak allocated and NVML device memory, "
            "NVML energy per token over a window of >= 1 s of repeated steps (the window is the last column), "
            "and the code path of the linears (`kernel`).", "",
            "| model | spec | " + " | ".join(h for _, h in SUITE_METRICS) + " | energy window s | timer | kernel |",
            "|---|---|" + "---|" * (len(SUITE_METRICS) + 3)]
    for (model, spec), m in sorted(cells.items()):
        lat = m.get("latency.decode_tok_s")
        e = m.get("energy.j_per_token")
        ex = (lat.extra if lat else {}) or {}
        out.append(f"| {model} | `{spec}` | " + " | ".join(_fmt(m.get(k)) for k, _ in SUITE_METRICS)
                   + f" | {_f((e.extra or {}).get('window_s'), '.2f') if e else '-'} | {ex.get('timer', '-')} "
                   f"| {ex.get('kernel', '-')} |")
    return out + [""]


def targets(summary: dict, cells: dict, kernels: str) -> list[str]:
    probe = summary.get("facts", {}).get("probe", {}) or {}
    out = ["## The issue's targets", ""]
    m = re.search(r"^## Targets\n\n(.*?)(?:\n## |\Z)", kernels, flags=re.S | re.M)
    out += ["Kernel targets (from the kernel page below):", ""]
    out += [m.group(1).strip() if m else "- not measured: the kernel step wrote no page (see the steps table)", ""]
    timing = probe.get("timing") or {}
    out += ["CUDA-event latency against `synchronize` + wall clock on the same call (target: within 5%):", ""]
    if timing:
        for name, t in timing.items():
            verdict = "meets" if t["agree_within_5pct"] else "MISSES"
            out.append(f"- {name}: events {t['events_ms']:.4f} ms, wall {t['wall_ms']:.4f} ms, differ "
                       f"{t['diff_pct']:.1f}% ({verdict}; median of {t['reps']})")
    else:
        out.append("- not measured (the probe step did not run or failed)")
    mem = probe.get("memory") or {}
    out += ["", "NVML device memory against torch `max_memory_allocated`:", ""]
    if mem.get("nvml_used_mb") is not None:
        out.append(f"- {mem['workload']}: torch max allocated {_f(mem['torch_max_allocated_mb'])} MiB, reserved "
                   f"{_f(mem['torch_reserved_mb'])} MiB; NVML used {_f(mem['nvml_used_mb'])} MiB (before this "
                   f"process {_f(mem['nvml_used_before_init_mb'])}). The difference: CUDA context "
                   f"{_f(mem.get('context_mb'))} MiB + allocator cache {_f(mem.get('allocator_cache_mb'))} MiB "
                   f"+ allocated; unexplained {_f(mem.get('unexplained_mb'))} MiB.")
    else:
        out.append(f"- not measured ({mem.get('nvml_reason') or 'the probe step did not run or failed'})")
    out += ["", "Decode energy per token, harness-speed fp16 against W4A16 (windows >= 1 s):", ""]
    for spec in ("none", W4A16):
        e = cells.get(("harness-speed", canonical(spec)), {}).get("energy.j_per_token")
        ex = (e.extra if e else None) or {}
        if e is None:
            out.append(f"- `{spec}`: not measured (no harness-speed `{spec}` energy record)")
            continue
        out.append(f"- `{spec}`: {_fmt(e)} J/token" + (f" over {ex['window_s']:.2f} s ({ex.get('repeats')} repeats, "
                                                     f"{_f(ex.get('mean_power_w'))} W)" if ex.get("window_s") else ""))
    return out + [""]


def kernel_section(kernels: str) -> list[str]:
    out = ["## Kernel micro-benchmark and harness-speed end to end (bench_kernels.py --quick)", ""]
    if not kernels:
        return out + ["Not measured: the kernel step wrote no page (see the steps table).", ""]
    body = kernels.split("\n", 1)[1] if kernels.startswith("# ") else kernels
    return out + [re.sub(r"^(#+) ", r"#\1 ", body.strip(), flags=re.M), ""]


def render(summary: dict, run: Path, kernels_page: Path, junit: Path) -> str:
    kernels = kernels_page.read_text() if kernels_page.exists() else ""
    cells, note = load_suite(run)
    lines = header(summary) + steps(summary) + targets(summary, cells, kernels) + gpu_tests(junit)
    lines += suite_table(cells, note) + kernel_section(kernels)
    lines += ["The run directory (records, run.json, report.html) is `run.tar.gz` beside this page in the "
              "check's output folder; the full log is `gpu-check.log`.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--summary", type=Path, required=True)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--kernels", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--docs", type=Path, help="also write this copy (docs/results/gpu.md)")
    args = ap.parse_args(argv)
    summary = json.loads(args.summary.read_text())
    text = render(summary, args.run, args.kernels, args.summary.parent / "pytest-gpu.xml")
    for path in [args.out] + ([args.docs] if args.docs else []):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    print(f"gpu_report: wrote {args.out}" + (f" and {args.docs}" if args.docs else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
