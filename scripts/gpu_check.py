"""The GPU path in one call (``make gpu-check``), and its CPU rehearsal (``make gpu-check-dry``).

    python3 scripts/gpu_check.py          # on the GPU machine, its own python3 (torch 2.11 + CUDA 13)
    .venv/bin/python scripts/gpu_check.py --dry

One process tree, steps in order (each a child process in its own process group):

  wheels    install .whl/ into WORK/site (pip --no-index --no-deps --target), then PYTHONPATH
  versions  the image's versions of what we use, against our specifiers (scripts/gpu_deps.py)
  imports   harness, its plugin, lm_eval, ruptures, bitsandbytes, triton, torch
  select    collect-only of every @pytest.mark.gpu test and of the suite's model x spec cells
  -- the first CUDA call; --dry stops here and prints the plan with time estimates --
  device    nvidia-smi and torch.cuda: GPU name, driver, CUDA, clocks
  gpu-tests pytest -m gpu (junit: pytest-gpu.xml)
  probe     CUDA events vs synchronize + wall clock on one call; NVML vs torch peak (scripts/gpu_probe.py)
  kernels   benchmarks/bench_kernels.py --quick --out OUT/gpu-results.md
  suite     harness run --quick --device cuda on harness-tiny and harness-speed for SPECS
  report    OUT/gpu.md (also docs/results/gpu.md), run.tar.gz, report.html (always runs)

Deadline: GPU_CHECK_DEADLINE_S (default 480) from the start. A step still running when its
share runs out gets SIGTERM (``harness run`` then marks the run partial and renders what it
measured), SIGKILL 15 s later; later steps are skipped; ``report`` always runs and keeps all
that was measured. OUT: GPU_CHECK_OUT, else $OUT (the device tool's folder), else
reports/gpu-check[-dry]/; at most 7 files there (OUT_FILES), under 16 MiB in all. WORK:
GPU_CHECK_WORK, else a temporary directory. The Hugging Face libraries run offline (HF_*_OFFLINE=1).
Exit 0: every step passed; 1: a step failed, timed out or was skipped; 2: bad setup. --dry
also exits 0 when .whl/ is missing, saying so (--strict: 1).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
WHEELS = ROOT / ".whl"
MODELS = ["harness-tiny", "harness-speed"]
SPECS = ["rtn:bits=4,group=128", "gptq:bits=4,group=128", "awq:bits=4,group=128", "bnb-nf4", "bnb-int8", "fp8"]
IMPORTS = ["torch", "triton", "harness", "harness.cli", "harness.plugin", "harness.measure.gpu",
           "harness.kernels.dispatch", "lm_eval", "ruptures", "datasets", "bitsandbytes"]
GPU_SCRIPTS = [SCRIPTS / "gpu_probe.py", SCRIPTS / "gpu_report.py", ROOT / "benchmarks" / "bench_kernels.py"]
OUT_FILES = ("gpu.md", "gpu-results.md", "gpu-check.log", "summary.json", "pytest-gpu.xml",
             "run.tar.gz", "report.html")
MAX_OUT_BYTES = 16 * 2**20
MAX_TRAVEL_BYTES = 64 * 2**20  # what one device call sends
OFFLINE = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY")
REPORT_RESERVE_S = 40  # kept back from the deadline: a stopped step's grace + the report step
KILL_GRACE_S = 15
MIN_STEP_S = 2  # a step with less time than this left is skipped
PY312 = sys.version_info[:2] == (3, 12)


@dataclass
class Step:
    name: str
    what: str
    estimate_s: int
    cap_s: int            # the most this step may take
    cuda: bool = False
    status: str = "planned"  # ok | failed | timed-out | skipped | planned | not ready
    wall_s: float = 0.0
    rc: int | None = None
    note: str = ""


def plan_steps() -> list[Step]:
    return [
        Step("wheels", "install .whl/ into WORK/site (--no-index --no-deps --target)", 20, 90),
        Step("versions", "image package versions vs our specifiers", 3, 30),
        Step("imports", "import " + ", ".join(IMPORTS), 15, 60),
        Step("select", "collect-only: the @pytest.mark.gpu tests and the suite's cells", 20, 90),
        Step("device", "nvidia-smi + torch.cuda: GPU, driver, CUDA, clocks", 10, 30, cuda=True),
        Step("gpu-tests", "pytest -m gpu", 60, 120, cuda=True),
        Step("probe", "CUDA events vs sync + wall clock; NVML vs torch peak", 20, 60, cuda=True),
        Step("kernels", "benchmarks/bench_kernels.py --quick", 110, 170, cuda=True),
        Step("suite", f"harness run --quick --device cuda: {' + '.join(MODELS)} x none + {len(SPECS)} specs",
             180, 400, cuda=True),
        Step("report", "gpu.md, run.tar.gz, report.html into OUT", 10, REPORT_RESERVE_S - KILL_GRACE_S),
    ]


@dataclass
class Check:
    dry: bool
    out: Path
    work: Path
    wheels: Path
    deadline_s: float
    t0: float = field(default_factory=time.monotonic)
    steps: list[Step] = field(default_factory=plan_steps)
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    facts: dict = field(default_factory=dict)
    log_path: Path | None = None

    # -- bookkeeping -------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return self.deadline_s - self.elapsed()

    def log(self, text: str) -> None:
        print(text, flush=True)
        if self.log_path:
            with open(self.log_path, "a") as f:
                f.write(text + "\n")

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)

    def write_summary(self) -> None:
        data = {"dry": self.dry, "deadline_s": self.deadline_s, "elapsed_s": round(self.elapsed(), 1),
                "python": sys.version.split()[0], "steps": [asdict(s) for s in self.steps], "facts": self.facts}
        tmp = self.out / "summary.json.tmp"
        tmp.write_text(json.dumps(data, indent=1, default=str))
        tmp.replace(self.out / "summary.json")

    # -- child processes ---------------------------------------------------------------
    def run(self, step: Step, argv: list[str], *, budget: float | None = None, cwd: Path = ROOT) -> int | None:
        """Run one child in its own process group, output into the log; SIGTERM at its
        budget, SIGKILL after the grace. Returns the exit code (None: timed out)."""
        budget = min(step.cap_s, self.left() - REPORT_RESERVE_S) if budget is None else budget
        if budget < MIN_STEP_S:
            step.status, step.note = "skipped", "deadline reached before this step"
            return None
        self.log(f"$ {' '.join(argv)}   (budget {budget:.0f} s)")
        t = time.monotonic()
        with open(self.log_path, "a") as logf:
            try:
                proc = subprocess.Popen(argv, cwd=cwd, env=self.env, stdout=logf, stderr=subprocess.STDOUT,
                                        process_group=0)
            except OSError as e:  # no such program (nvidia-smi on a host without the driver)
                step.status, step.note = "failed", f"could not start {argv[0]}: {e}"
                return 127
            timed_out = False
            try:
                rc = proc.wait(timeout=budget)
            except subprocess.TimeoutExpired:
                timed_out = True
                tree = descendants(proc.pid)  # before the signal: children in groups of their own too
                self._signal(proc, signal.SIGTERM)
                try:
                    rc = proc.wait(timeout=KILL_GRACE_S)
                except subprocess.TimeoutExpired:
                    tree |= descendants(proc.pid)
                    self._signal(proc, signal.SIGKILL)
                    rc = proc.wait()
                for pid in tree:  # whatever of the tree outlived its parent (pytest under harness run)
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
        step.wall_s = round(step.wall_s + time.monotonic() - t, 1)
        step.rc = rc
        if timed_out:
            step.status, step.note = "timed-out", f"stopped at its {budget:.0f} s budget (deadline)"
            return None
        step.status = "ok" if rc == 0 else "failed"
        return rc

    @staticmethod
    def _signal(proc: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    def capture(self, argv: list[str], timeout: float = 60, cwd: Path = ROOT) -> subprocess.CompletedProcess:
        return subprocess.run(argv, cwd=cwd, env=self.env, capture_output=True, text=True, timeout=timeout)


def travel_bytes(wheels: Path) -> int | None:
    """What a device call sends: git's tracked and untracked-not-ignored files, plus the wheels."""
    try:
        r = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return None
    files = [ROOT / f for f in r.stdout.decode().split("\0") if f]
    return sum(f.stat().st_size for f in files if f.is_file()) + sum(w.stat().st_size for w in wheels.glob("*.whl"))


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (Linux /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


# -- the steps --------------------------------------------------------------------------
def do_wheels(c: Check) -> None:
    s = c.step("wheels")
    sys.path.insert(0, str(SCRIPTS))
    import gpu_deps

    pins = gpu_deps.load_manifest()
    have = {gpu_deps.wheel_name_version(w): w for w in sorted(c.wheels.glob("*.whl"))}
    names = {n for n, _ in have}
    lacking = [f"{p.name}=={p.version}" for p in pins if (p.name, p.version) not in have]
    if gpu_deps.canonicalize_name(gpu_deps.HARNESS) not in names:
        lacking.insert(0, "the harness wheel (llm_compression_harness-*.whl)")
    c.facts["wheels"] = {"dir": str(c.wheels), "count": len(have),
                         "mib": round(sum(w.stat().st_size for w in have.values()) / 2**20, 2), "lacking": lacking}
    if c.dry:  # the device tool sends the tree (tracked + untracked-not-ignored) and the carried .whl/
        travel = travel_bytes(c.wheels)
        if travel is not None:
            c.facts["travel_mib"] = round(travel / 2**20, 1)
            c.log(f"gpu-check: the call would send {travel / 2**20:.1f} MiB (tree + {c.wheels.name}/; limit 64 MiB)")
            if travel > MAX_TRAVEL_BYTES:
                s.status, s.note = "failed", f"tree + wheels are {travel / 2**20:.1f} MiB, over the 64 MiB a call sends"
                return
    if lacking:
        s.status = "not ready"
        s.note = (f"{len(lacking)} wheel(s) missing from {c.wheels}: {', '.join(lacking[:6])}"
                  f"{' ...' if len(lacking) > 6 else ''}; run `make gpu-wheels` here (with network)")
        c.log(f"gpu-check: {s.note}")
        if not have:
            return
    site = c.work / "site"
    shutil.rmtree(site, ignore_errors=True)
    argv = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
            "--no-cache-dir", "--disable-pip-version-check", "--target", str(site)]
    if not PY312:  # rehearsal on another interpreter: install as for the GPU machine's 3.12
        argv += ["--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:"]
        argv += [a for p in ("manylinux_2_28_x86_64", "manylinux_2_24_x86_64", "manylinux2014_x86_64",
                             "manylinux_2_17_x86_64") for a in ("--platform", p)]
    before = s.status
    rc = c.run(s, argv + [str(w) for w in have.values()])
    if rc == 0:
        c.facts["site"] = str(site)
        if PY312:  # the installed set is what every later step imports
            c.env["PYTHONPATH"] = os.pathsep.join([str(site), c.env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
            c.env["PATH"] = os.pathsep.join([str(site / "bin"), c.env.get("PATH", "")])
        else:
            s.note = (s.note + "; " if s.note else "") + (
                f"installed for CPython 3.12 but this is {sys.version.split()[0]}: later steps import "
                "from this interpreter's own environment")
        if before == "not ready":
            s.status = before


def do_versions(c: Check) -> None:
    s = c.step("versions")
    extra = ["--absent-ok", "bitsandbytes"] if (c.dry and not PY312) else []
    rc = c.run(s, [sys.executable, str(SCRIPTS / "gpu_deps.py"), "--verify-installed", *extra])
    if rc not in (0, None):
        s.note = "some installed versions do not satisfy our specifiers (see the log)"


def do_imports(c: Check) -> None:
    s = c.step("imports")
    code = ("import importlib, importlib.metadata as md, json, sys, time\n"
            "res = {}\n"
            f"for m in {IMPORTS!r}:\n"
            "    t = time.perf_counter()\n"
            "    try:\n"
            "        mod = importlib.import_module(m)\n"
            "        res[m] = {'ok': True, 's': round(time.perf_counter() - t, 2), "
            "'version': getattr(mod, '__version__', ''), 'file': getattr(mod, '__file__', '')}\n"
            "    except Exception as e:\n"
            "        res[m] = {'ok': False, 'error': f'{type(e).__name__}: {e}'[:300]}\n"
            f"for f in {[str(p) for p in GPU_SCRIPTS]!r}:\n"
            "    try:\n"
            "        compile(open(f).read(), f, 'exec')\n"
            "        res[f] = {'ok': True, 's': 0.0, 'version': 'compiles', 'file': f}\n"
            "    except Exception as e:\n"
            "        res[f] = {'ok': False, 'error': f'{type(e).__name__}: {e}'[:300]}\n"
            "print('GPUCHECK-IMPORTS ' + json.dumps(res))\n")
    t = time.monotonic()
    try:
        # from WORK, not the tree: the harness then comes from the installed wheel (PYTHONPATH)
        r = c.capture([sys.executable, "-c", code], timeout=min(s.cap_s, max(c.left() - REPORT_RESERVE_S, 1)),
                      cwd=c.work)
    except subprocess.TimeoutExpired:
        s.status, s.note = "timed-out", "imports did not finish"
        return
    s.wall_s = round(time.monotonic() - t, 1)
    c.log(r.stderr.strip()[-2000:])
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("GPUCHECK-IMPORTS ")), None)
    if line is None:
        s.status, s.note = "failed", f"import probe exited {r.returncode}"
        return
    res = json.loads(line.split(" ", 1)[1])
    c.facts["imports"] = res
    for m, v in res.items():
        c.log(f"  import {m:26s} " + (f"ok {v['s']:5.2f} s {v['version']} {v['file']}" if v["ok"] else v["error"]))
    bad = [m for m, v in res.items() if not v["ok"]]
    # bitsandbytes is carried as a wheel: a rehearsal on another interpreter may lack it
    allowed = {"bitsandbytes"} if (c.dry and not PY312) else set()
    if set(bad) - allowed:
        s.status, s.note = "failed", "not importable: " + ", ".join(sorted(set(bad) - allowed))
    else:
        s.status = "ok"
        if bad:
            s.note = "not importable in this rehearsal (it is carried as a wheel): " + ", ".join(bad)


def gpu_test_files() -> list[str]:
    """Test files that mention the gpu marker (pytest -m gpu then picks the tests)."""
    pat = re.compile(r"mark\.gpu\b|marks=.*\bgpu\b")
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py") if pat.search(p.read_text()))


def do_select(c: Check) -> None:
    s = c.step("select")
    files = gpu_test_files()
    c.facts["gpu_test_files"] = files
    t = time.monotonic()
    try:
        r = c.capture([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                       *files], timeout=min(s.cap_s, max(c.left() - REPORT_RESERVE_S, 1)))
    except subprocess.TimeoutExpired:
        s.status, s.note = "timed-out", "collection did not finish"
        return
    s.wall_s = round(time.monotonic() - t, 1)
    ids = [ln for ln in r.stdout.splitlines() if "::" in ln]
    c.facts["gpu_tests"] = ids
    c.log("\n".join(f"  {i}" for i in ids) + f"\n  {r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ''}")
    if r.returncode != 0 or not ids:
        s.status = "failed"
        s.note = f"collect-only exited {r.returncode} with {len(ids)} gpu tests: {r.stdout[-500:]}{r.stderr[-500:]}"
        return
    # the suite's cells: models and specs valid, one test per model x spec (auto: cpu here, cuda there)
    argv = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "suites/test_default.py",
            "--harness-quick", "--harness-device=auto", *[f"--harness-model={m}" for m in MODELS],
            *[f"--harness-technique={t}" for t in SPECS]]
    try:
        r = c.capture(argv, timeout=min(s.cap_s, max(c.left() - REPORT_RESERVE_S, 1)))
    except subprocess.TimeoutExpired:
        s.status, s.note = "timed-out", "suite collection did not finish"
        return
    s.wall_s = round(time.monotonic() - t, 1)
    cells = [ln for ln in r.stdout.splitlines() if "::" in ln]
    c.facts["suite_cells"] = cells
    c.log("\n".join(f"  {i}" for i in cells))
    want = len(MODELS) * (1 + len(SPECS))
    if r.returncode != 0 or len(cells) != want:
        s.status = "failed"
        s.note = (f"suite collect-only exited {r.returncode} with {len(cells)} of {want} cells: "
                  f"{(r.stdout + r.stderr)[-500:]}")
    else:
        s.status, s.note = "ok", f"{len(ids)} gpu tests in {len(files)} files; {len(cells)} suite cells"


def do_device(c: Check) -> None:
    s = c.step("device")
    q = "name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,memory.total,power.limit"
    rc = c.run(s, ["nvidia-smi", f"--query-gpu={q}", "--format=csv"])
    code = ("import json, torch; from harness.measure import gpu\n"
            "info = gpu.nvml_device_info(0)\n"
            "info.update(torch=torch.__version__, cuda_runtime=torch.version.cuda, "
            "cuda_ok=torch.cuda.is_available(), torch_name=torch.cuda.get_device_name(0) "
            "if torch.cuda.is_available() else None)\n"
            "print('GPUCHECK-DEVICE ' + json.dumps(info, default=str))\n")
    r = c.capture([sys.executable, "-c", code], timeout=60)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("GPUCHECK-DEVICE ")), None)
    c.facts["device"] = json.loads(line.split(" ", 1)[1]) if line else {"error": r.stderr[-500:]}
    c.log(f"  device: {c.facts['device']}")
    if not c.facts["device"].get("cuda_ok"):
        s.status, s.note = "failed", "torch sees no CUDA GPU: every later step would measure nothing"
    else:
        s.status, s.note = "ok", ("" if rc == 0 else "nvidia-smi failed; NVML figures come from pynvml")


def do_gpu_tests(c: Check) -> None:
    s = c.step("gpu-tests")
    c.run(s, [sys.executable, "-m", "pytest", "-q", "-rs", "-m", "gpu", "-p", "no:cacheprovider",
              f"--junitxml={c.out / 'pytest-gpu.xml'}", *gpu_test_files()])


def do_probe(c: Check) -> None:
    s = c.step("probe")
    path = c.work / "probe.json"
    c.run(s, [sys.executable, str(SCRIPTS / "gpu_probe.py"), "--out", str(path)])
    if path.exists():
        c.facts["probe"] = json.loads(path.read_text())


def do_kernels(c: Check) -> None:
    c.run(c.step("kernels"), [sys.executable, str(ROOT / "benchmarks" / "bench_kernels.py"), "--quick",
                              "--out", str(c.out / "gpu-results.md")])


def suite_argv(run_dir: Path) -> list[str]:
    argv = [sys.executable, "-c", "import sys; from harness.cli import main; sys.exit(main())",
            "run", "--quick", "--device", "cuda", "--out", str(run_dir)]
    for m in MODELS:
        argv += ["--model", m]
    for spec in SPECS:
        argv += ["--technique", spec]
    return argv


def do_suite(c: Check) -> None:
    run_dir = c.work / "run"
    c.facts["run_dir"] = str(run_dir)
    c.run(c.step("suite"), suite_argv(run_dir))


def do_report(c: Check) -> None:
    s = c.step("report")
    t = time.monotonic()
    run_dir = Path(c.facts.get("run_dir", c.work / "run"))
    notes = []
    s.status = "running"
    if run_dir.is_dir():
        if (run_dir / "report.html").exists():
            shutil.copyfile(run_dir / "report.html", c.out / "report.html")
        pack_run(run_dir, c.out / "run.tar.gz")
    c.write_summary()
    # the page; a rehearsal renders it too (every section says 'not measured') but leaves docs/ alone
    measured = not c.dry and c.step("device").status == "ok"  # docs/ only from a run on a GPU
    docs = ["--docs", str(ROOT / "docs" / "results" / "gpu.md")] if measured else []
    try:
        rc = c.capture([sys.executable, str(SCRIPTS / "gpu_report.py"), "--summary", str(c.out / "summary.json"),
                        "--run", str(run_dir), "--kernels", str(c.out / "gpu-results.md"),
                        "--out", str(c.out / "gpu.md"), *docs], timeout=max(c.left(), 20))
        c.log((rc.stdout[-2000:] + rc.stderr[-2000:]).strip())
        if rc.returncode != 0:
            notes.append("gpu_report failed (see the log)")
    except subprocess.TimeoutExpired:
        notes.append("gpu_report did not finish")
    total = sum(p.stat().st_size for p in c.out.iterdir() if p.is_file())
    if total > MAX_OUT_BYTES and (c.out / "run.tar.gz").exists():
        pack_run(run_dir, c.out / "run.tar.gz", max_file=256 * 2**10)
        notes.append("run.tar.gz repacked without files over 256 KiB to stay under 16 MiB")
        total = sum(p.stat().st_size for p in c.out.iterdir() if p.is_file())
    c.facts["out_bytes"] = total
    s.wall_s = round(time.monotonic() - t, 1)
    if total > MAX_OUT_BYTES:
        notes.append(f"OUT holds {total / 2**20:.1f} MiB, over 16 MiB")
    s.status, s.note = ("ok" if total <= MAX_OUT_BYTES and not notes[-1:] == ["gpu_report failed (see the log)"]
                        else "failed"), "; ".join(notes)


def pack_run(run_dir: Path, dest: Path, max_file: int | None = None) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for p in sorted(run_dir.rglob("*")):
            if p.is_file() and (max_file is None or p.stat().st_size <= max_file):
                tar.add(p, arcname=str(Path("run") / p.relative_to(run_dir)))
    tmp.replace(dest)


# -- driver -----------------------------------------------------------------------------
def print_plan(c: Check) -> None:
    c.log(f"gpu-check plan (deadline {c.deadline_s:.0f} s, {REPORT_RESERVE_S} s of it kept for the report):")
    total = 0
    for s in c.steps:
        total += s.estimate_s
        mark = "GPU" if s.cuda else "cpu"
        c.log(f"  {s.name:10s} [{mark}] ~{s.estimate_s:4d} s (cap {s.cap_s:3d} s, by ~{total:4d} s)  "
              f"{s.status:9s} {s.what}" + (f"  -- {s.note}" if s.note else ""))
    c.log(f"  estimated total ~{total} s of {c.deadline_s:.0f} s; OUT {c.out}; files: {', '.join(OUT_FILES)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry", action="store_true", help="CPU rehearsal: stop before the first CUDA call")
    ap.add_argument("--strict", action="store_true", help="--dry: missing wheels fail (exit 1)")
    ap.add_argument("--wheels", type=Path, default=WHEELS)
    args = ap.parse_args(argv)
    try:
        deadline = float(os.environ.get("GPU_CHECK_DEADLINE_S", "480"))
    except ValueError:
        print("gpu-check: GPU_CHECK_DEADLINE_S must be a number of seconds", file=sys.stderr)
        return 2
    default_out = ROOT / "reports" / ("gpu-check-dry" if args.dry else "gpu-check")
    out = Path(os.environ.get("GPU_CHECK_OUT") or os.environ.get("OUT") or default_out)
    out.mkdir(parents=True, exist_ok=True)
    for name in OUT_FILES + ("summary.json.tmp",):  # a rerun into the same folder starts clean
        (out / name).unlink(missing_ok=True)
    work = Path(os.environ.get("GPU_CHECK_WORK") or tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    c = Check(dry=args.dry, out=out, work=work, wheels=args.wheels, deadline_s=deadline)
    c.log_path = out / "gpu-check.log"
    c.env["PYTHONUNBUFFERED"] = "1"
    for var in OFFLINE:  # the GPU machine has no network: fail at once rather than wait on a connection
        c.env.setdefault(var, "1")
    c.log(f"gpu-check{' --dry' if args.dry else ''}: python {sys.version.split()[0]} ({sys.executable}), "
          f"deadline {deadline:.0f} s, OUT {out}, WORK {work}")
    cpu_steps = [do_wheels, do_versions, do_imports, do_select]
    gpu_steps = [do_device, do_gpu_tests, do_probe, do_kernels, do_suite]
    for fn in cpu_steps + ([] if args.dry else gpu_steps):
        s = c.step(fn.__name__[3:].replace("_", "-"))
        if c.left() - REPORT_RESERVE_S < MIN_STEP_S:
            s.status, s.note = "skipped", "deadline reached"
            continue
        if s.name in ("gpu-tests", "probe", "kernels", "suite") and c.step("device").status == "failed":
            s.status, s.note = "skipped", "no CUDA GPU (device step)"
            continue
        c.log(f"== {s.name}: {s.what} ({c.elapsed():.0f} s elapsed, {c.left():.0f} s left)")
        try:
            fn(c)
        except Exception as e:  # a broken step is a failed step; the others and the report still run
            s.status, s.note = "failed", f"{type(e).__name__}: {e}"[:500]
            c.log(traceback.format_exc())
        c.log(f"== {s.name}: {s.status} in {s.wall_s} s{' -- ' + s.note if s.note else ''}")
        c.write_summary()
    try:
        do_report(c)
    except Exception as e:
        c.step("report").status, c.step("report").note = "failed", f"{type(e).__name__}: {e}"[:500]
        c.log(traceback.format_exc())
    if args.dry:
        print_plan(c)
    c.write_summary()
    states = {s.status for s in c.steps if s.status != "planned"}
    failed = states & {"failed", "timed-out", "skipped"}  # skipped: the deadline or no GPU cut it short
    not_ready = "not ready" in states
    verdict = ("FAILED" if failed else "NOT READY" if not_ready else "ok")
    c.log(f"gpu-check{' --dry' if args.dry else ''}: {verdict} in {c.elapsed():.0f} s; "
          + ", ".join(f"{s.name} {s.status}" for s in c.steps))
    if failed or (not_ready and (args.strict or not args.dry)):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
