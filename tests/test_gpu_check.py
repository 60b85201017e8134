"""The prepared GPU check (issue 31), all without a GPU or network: the wheel set against the
GPU image's package list, wheel slimming, the check's deadline and process-tree handling, its
dry run end to end, and the gpu.md page rendered from a fake run."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_check  # noqa: E402
import gpu_deps  # noqa: E402
import gpu_report  # noqa: E402
import gpu_wheels  # noqa: E402

DEVICE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")  # what the device tool brings back


# -- the wheel set ------------------------------------------------------------------------
def test_package_list_is_dated_and_holds_the_image_basics():
    pkgs = gpu_deps.load_package_list()
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", pkgs.date)
    assert pkgs.versions["torch"] == "2.11.0" and pkgs.versions["triton"] == "3.6.0"
    assert pkgs.versions["transformers"] == "5.17.0"
    assert "pytest" in pkgs.versions and "lm-eval" not in pkgs.versions


def test_wheel_set_is_complete_against_the_package_list():
    """Every runtime need of the harness (+ the 'gpu' extra), walked through what is carried,
    is in the image at an accepted version or pinned in gpu/wheels.txt at an accepted one."""
    pkgs, pins = gpu_deps.load_package_list(), gpu_deps.load_manifest()
    plan = gpu_deps.plan(pkgs)
    assert gpu_deps.check_manifest(plan, pins) == []
    assert {"lm-eval", "ruptures", "bitsandbytes", "datasets"} <= set(plan.missing)
    # needs we could not walk (not installed here) are carried, so gpu_wheels checks them on their wheel
    assert set(plan.unknown) <= {p.name for p in pins}


def test_wheel_set_never_carries_torch_or_triton_and_pins_the_locked_versions():
    pins = gpu_deps.load_manifest()
    assert not [p for p in pins if gpu_deps.NEVER_CARRY.match(p.name)]
    lock = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            lock[gpu_deps.canonicalize_name(name)] = version.strip()
    assert [f"{p.name}=={p.version} (lock {lock[p.name]})" for p in pins
            if p.name in lock and lock[p.name] != p.version] == []


def test_the_completeness_check_catches_a_dropped_pin_and_a_refused_version():
    pkgs, pins = gpu_deps.load_package_list(), gpu_deps.load_manifest()
    dropped = [p for p in pins if p.name != "dill"]
    problems = gpu_deps.check_manifest(gpu_deps.plan(pkgs), dropped)
    assert len(problems) == 1 and problems[0].startswith("dill") and "not in wheels.txt" in problems[0]
    # an image holding transformers at a version pyproject refuses: it must travel
    refused = gpu_deps.PackageList(pkgs.date, {**pkgs.versions, "transformers": "5.50.0"})
    plan = gpu_deps.plan(refused)
    assert "transformers" in plan.missing
    assert any(p.startswith("transformers") for p in gpu_deps.check_manifest(plan, pins))
    # ... but torch never travels: a refused torch is a problem of its own
    old_torch = gpu_deps.PackageList(pkgs.date, {**pkgs.versions, "torch": "2.3.0"})
    plan = gpu_deps.plan(old_torch)
    assert "torch" not in plan.missing and plan.refused_uncarriable == ["torch 2.3.0 (needs >=2.4)"]


def test_manifest_rejects_two_versions_and_bad_lines(tmp_path):
    f = tmp_path / "w.txt"
    f.write_text("dill==0.4.1\nDill==0.4.0\n")
    with pytest.raises(ValueError, match="more than one version of dill"):
        gpu_deps.load_manifest(f)
    f.write_text("dill>=0.4\n")
    with pytest.raises(ValueError, match="not name==version"):
        gpu_deps.load_manifest(f)


def _fake_wheel(path: Path, files: dict[str, bytes]) -> Path:
    dist = "demo-1.0.dist-info"
    files = {**files, f"{dist}/METADATA": b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\nRequires-Dist: numpy\n",
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\nTag: py3-none-any\n"}
    record = "\n".join(gpu_wheels._record_line(n, d) for n, d in files.items()) + f"\n{dist}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for n, d in files.items():
            z.writestr(n, d)
        z.writestr(f"{dist}/RECORD", record)
    return path


def test_slim_keeps_only_the_named_libraries_and_rewrites_record(tmp_path):
    whl = _fake_wheel(tmp_path / "demo-1.0-py3-none-any.whl", {
        "demo/__init__.py": b"x = 1\n", "demo/libdemo_cuda118.so": b"\0" * 1000,
        "demo/libdemo_cuda130.so": b"\1" * 10, "demo/libdemo_cpu.so": b"\2" * 10})
    assert gpu_wheels.slim(whl, ("*/libdemo_cuda130.so", "*/libdemo_cpu.so")) == 1
    with zipfile.ZipFile(whl) as z:
        names = set(z.namelist())
        record = z.read("demo-1.0.dist-info/RECORD").decode().splitlines()
        for line in record:
            name, digest, size = line.split(",")
            if digest:
                assert line == gpu_wheels._record_line(name, z.read(name))
    assert "demo/libdemo_cuda118.so" not in names and {"demo/libdemo_cuda130.so", "demo/__init__.py"} <= names
    assert {r.split(",")[0] for r in record} == names
    assert gpu_wheels.slim(whl, ("*/libdemo_cuda130.so", "*/libdemo_cpu.so")) == 0  # already slim
    assert gpu_deps.wheel_requires(whl) == ["numpy"]
    with pytest.raises(ValueError, match="matches none"):
        gpu_wheels.slim(whl, ("*/libnothing.so",))


def test_built_wheel_set_if_present():
    """After `make gpu-wheels` here: the set checks out on its own metadata and fits 40 MiB."""
    dest = gpu_wheels.DEST
    if not list(dest.glob(gpu_wheels.HARNESS_WHEEL + "*.whl")):
        pytest.skip(f"no harness wheel in {dest}: run `make gpu-wheels` (needs network)")
    assert gpu_wheels.check_wheels(dest, gpu_deps.load_manifest(), gpu_deps.load_package_list()) == []
    assert sum(w.stat().st_size for w in dest.glob("*.whl")) <= gpu_deps.MAX_TOTAL_MIB * 2**20


# -- the check ----------------------------------------------------------------------------
def test_output_files_fit_what_the_device_tool_brings_back():
    assert len(gpu_check.OUT_FILES) <= 8
    assert all(DEVICE_NAME.match(n) for n in gpu_check.OUT_FILES)
    steps = gpu_check.plan_steps()
    assert sum(s.estimate_s for s in steps) < 480 and [s.name for s in steps if not s.cuda][-1] == "report"
    assert gpu_check.MODELS == ["harness-tiny", "harness-speed"] and len(gpu_check.SPECS) == 6


def test_suite_command_names_every_model_and_spec(tmp_path):
    argv = gpu_check.suite_argv(tmp_path / "run")
    assert argv[3:8] == ["run", "--quick", "--device", "cuda", "--out"]
    assert argv.count("--model") == 2 and argv.count("--technique") == 6
    assert "bnb-nf4" in argv and "fp8" in argv and "awq:bits=4,group=128" in argv


def _check(tmp_path, deadline_s: float = 60) -> gpu_check.Check:
    out = tmp_path / "out"
    out.mkdir()
    c = gpu_check.Check(dry=True, out=out, work=tmp_path, wheels=tmp_path / "whl", deadline_s=deadline_s)
    c.log_path = out / "gpu-check.log"
    return c


def _alive(pid: int) -> bool:
    """Running (a killed orphan may linger as a zombie where PID 1 does not reap)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_a_step_past_its_budget_is_stopped_with_its_whole_tree(tmp_path, monkeypatch):
    """The child puts a grandchild into a process group of its own (as harness run does with
    pytest) and both ignore SIGTERM: the budget stops the step, and no process outlives it."""
    monkeypatch.setattr(gpu_check, "KILL_GRACE_S", 1)
    pidfile = tmp_path / "grandchild.pid"
    code = ("import os, signal, subprocess, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'], process_group=0)\n"
            f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
            "time.sleep(60)\n")
    c = _check(tmp_path)
    step = gpu_check.Step("demo", "sleeps", 1, 60)
    t = time.monotonic()
    rc = c.run(step, [sys.executable, "-c", code], budget=2)
    assert rc is None and step.status == "timed-out" and "budget" in step.note
    assert time.monotonic() - t < 15
    grandchild = int(pidfile.read_text())
    time.sleep(0.2)
    assert not _alive(grandchild)
    assert "$ " in c.log_path.read_text()


def test_a_step_with_no_time_left_is_skipped(tmp_path):
    c = _check(tmp_path, deadline_s=gpu_check.REPORT_RESERVE_S + 0.5)
    step = gpu_check.Step("demo", "never", 1, 60)
    assert c.run(step, [sys.executable, "-c", "pass"]) is None
    assert step.status == "skipped" and "deadline" in step.note


def _fake_wheels(d: Path) -> Path:
    d.mkdir()
    _fake_wheel(d / "demo-1.0-py3-none-any.whl", {"demo/__init__.py": b"x = 1\n"})
    return d


def _dry(tmp_path, *args, deadline: str | None = None):
    env = {**os.environ, "GPU_CHECK_OUT": str(tmp_path / "out"), "GPU_CHECK_WORK": str(tmp_path / "work")}
    env.pop("OUT", None)
    if deadline:
        env["GPU_CHECK_DEADLINE_S"] = deadline
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--dry", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


def test_dry_run_rehearses_everything_up_to_the_first_cuda_call(tmp_path):
    """make gpu-check-dry, with a wheel folder lacking the real set: it installs what is
    there, says what is missing, imports, selects the gpu tests and the suite's cells, prints
    the plan with estimates, and leaves only the files the device tool brings back."""
    r = _dry(tmp_path, "--wheels", str(_fake_wheels(tmp_path / "whl")))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    steps = {s["name"]: s for s in summary["steps"]}
    assert steps["wheels"]["status"] == "not ready" and "make gpu-wheels" in steps["wheels"]["note"]
    assert "the harness wheel" in steps["wheels"]["note"]
    assert (tmp_path / "work" / "site" / "demo" / "__init__.py").exists()  # the install ran
    assert steps["versions"]["status"] == "ok" and steps["imports"]["status"] == "ok"
    assert steps["select"]["status"] == "ok"
    tests = summary["facts"]["gpu_tests"]
    assert any("test_kernels_gpu.py::" in t for t in tests)
    assert len(summary["facts"]["suite_cells"]) == 14
    assert all(steps[n]["status"] == "planned" for n in ("device", "gpu-tests", "probe", "kernels", "suite"))
    assert "gpu-check plan" in r.stdout and "~" in r.stdout and "NOT READY" in r.stdout
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert files <= set(gpu_check.OUT_FILES) and {"gpu.md", "summary.json", "gpu-check.log"} <= files
    assert "Rehearsal only" in (tmp_path / "out" / "gpu.md").read_text()


def test_dry_run_stops_at_its_deadline_and_keeps_its_files(tmp_path):
    r = _dry(tmp_path, "--wheels", str(tmp_path / "none"), deadline=str(gpu_check.REPORT_RESERVE_S + 1))
    assert r.returncode == 1
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    cpu = [s for s in summary["steps"] if s["name"] != "report" and not s["cuda"]]
    assert {s["status"] for s in cpu} == {"skipped"} and all("deadline" in s["note"] for s in cpu)
    assert next(s for s in summary["steps"] if s["name"] == "report")["status"] == "ok"
    assert (tmp_path / "out" / "gpu.md").exists() and "FAILED" in r.stdout


def test_bad_deadline_is_one_line_and_exit_2(tmp_path):
    r = _dry(tmp_path, deadline="soon")
    assert r.returncode == 2 and "GPU_CHECK_DEADLINE_S" in r.stderr


# -- the page -----------------------------------------------------------------------------
def test_gpu_page_from_a_fake_run(tmp_path):
    from harness.records import Record, RecordWriter

    run = tmp_path / "run"
    w = RecordWriter(run)
    for spec, jpt in (("none", 0.08), (gpu_report.canonical(gpu_report.W4A16), 0.05)):
        w.write([Record("latency.decode_tok_s", 500.0, model="harness-speed", spec=spec,
                        extra={"timer": "cuda-events", "kernel": "triton w4a16" if spec != "none" else "dense"}),
                 Record("energy.j_per_token", jpt, model="harness-speed", spec=spec,
                        extra={"window_s": 1.02, "repeats": 12, "tokens": 768, "mean_power_w": 250.0}),
                 Record.na("memory.nvml_used_mb", "NVML unavailable: test", model="harness-speed", spec=spec)])
    w.write([Record.na("energy.j_per_token", "energy window 0.400 s after 10000 repeats is under the 1 s minimum",
                       model="harness-tiny", spec="fp8")])
    (tmp_path / "pytest-gpu.xml").write_text(
        '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">'
        '<testcase classname="tests.a" name="t1"/><testcase classname="tests.a" name="t2">'
        '<failure message="boom">x</failure></testcase>'
        '<testcase classname="tests.a" name="t3"><skipped message="no bnb"/></testcase></testsuite></testsuites>')
    kernels = tmp_path / "gpu-results.md"
    kernels.write_text("# GPU results\n\nintro\n\n## Kernel micro-benchmark\n\ntable\n\n## Targets\n\n"
                       "- W4A16 M=1 4096x4096: 71% of peak (meets)\n")
    summary = {"dry": False, "elapsed_s": 400.0, "deadline_s": 480.0, "python": "3.12.3",
               "steps": [{"name": "suite", "status": "ok", "wall_s": 200.0, "note": ""}],
               "facts": {"device": {"gpu": "NVIDIA H100 80GB HBM3", "driver": "580.159.04"},
                         "probe": {"timing": {"matmul": {"events_ms": 10.0, "wall_ms": 10.2, "diff_pct": 1.96,
                                                         "agree_within_5pct": True, "reps": 30}},
                                   "memory": {"workload": "w", "nvml_used_mb": 1500.0, "nvml_used_before_init_mb": 0.0,
                                              "torch_max_allocated_mb": 900.0, "torch_reserved_mb": 1000.0,
                                              "context_mb": 480.0, "allocator_cache_mb": 100.0,
                                              "unexplained_mb": 20.0}}}}
    text = gpu_report.render(summary, run, kernels, tmp_path / "pytest-gpu.xml")
    assert "**NVIDIA H100 80GB HBM3**" in text and "Driver 580.159.04" in text
    assert gpu_report.canonical(gpu_report.W4A16) == "rtn:group=128"  # records hold the canonical spec
    assert "| harness-speed | `rtn:group=128` | 500 |" in text
    assert "- `rtn:bits=4,group=128`: 0.05 J/token over 1.02 s" in text
    assert "| 1.02 | cuda-events | triton w4a16 |" in text
    assert "- `none`: 0.08 J/token over 1.02 s (12 repeats, 250.0 W)" in text
    assert "under the 1 s minimum" in text  # an N/A says why
    assert "W4A16 M=1 4096x4096: 71% of peak (meets)" in text and "### Kernel micro-benchmark" in text
    assert "differ 2.0% (meets" in text and "CUDA context 480.0 MiB" in text
    assert "3 tests: 1 passed, 1 failed" in text and "failure: `tests.a::t2` boom" in text
    empty = gpu_report.render({"dry": False, "steps": [], "facts": {}}, tmp_path / "nope", tmp_path / "x.md",
                              tmp_path / "none.xml")
    assert "No records" in empty and "not measured" in empty
