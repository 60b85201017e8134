"""``harness run --executor ray``: each collected test (one model x technique cell of a
registry-driven suite) runs as one Ray task; no scheduler of our own.

The driver collects the suite once (``pytest --collect-only``), submits one task per test
with its declared resources (``num_gpus=1`` for GPU cells, ``num_cpus`` otherwise; Ray
places it and sets ``CUDA_VISIBLE_DEVICES``), and gathers what each task returns: the
records, outcomes and run.json the cell wrote in a node-local staging directory. They are
written into one run directory; each node's fingerprint is kept under ``nodes`` in
run.json. A cell whose task failed, or whose worker or node died, gets an ``error``
outcome with Ray's reason and the run is marked partial; the other cells are kept.

A cell runs pytest in the Ray worker's process (``pytest.main``), so a worker that serves
several cells imports torch once; cells on one node share the uncompressed reference's
measurements through the node's staging directory, as xdist workers share it in a run
directory (speed-ups are relative to each node's own reference). Needs the optional extra
``cluster`` (``pip install 'llm-compression-harness[cluster]'``).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.paths import append_jsonl
from harness.rundir import write_run_info


@dataclass
class CellResult:
    """What one cell's task brought back (or why nothing came back)."""

    nodeid: str
    files: dict[str, str] = field(default_factory=dict)  # file name -> text (records-*, outcomes-*, run.json)
    node: str = ""
    exit_code: int | None = None
    error: str = ""
    seconds: float = 0.0


def import_ray():
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ValueError("--executor ray needs the 'ray' package: pip install "
                           "'llm-compression-harness[cluster]' (or pip install ray)") from None
    return ray


def collect(suites: list[str], extra: list[str], pytest_args: list[str]) -> list[str]:
    """Test ids the suite selects (with the same harness options and -k/-m filters)."""
    cmd = [sys.executable, "-m", "pytest", *suites, *extra, *pytest_args, "--collect-only", "-q",
           "-p", "no:cacheprovider"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    ids = [line.strip() for line in proc.stdout.splitlines() if "::" in line and not line.startswith(" ")]
    if proc.returncode not in (0, 5) or (proc.returncode == 0 and not ids):
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
        raise ValueError(f"collecting the suite failed (pytest exit {proc.returncode}): {tail[0]}")
    return ids


def connect(address: str | None, num_cpus: int | None = None) -> Any:
    """``ray.init``: a local cluster when ``address`` is None, else ``auto`` or HOST:PORT.
    An unreachable address is a one-line ValueError."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    if address and address != "auto":
        _check_reachable(address)
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, log_to_driver=False)
    except (ConnectionError, RuntimeError, TimeoutError, ValueError) as e:
        raise ValueError(f"--address {address!r}: cannot connect to a Ray cluster "
                         f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    return ray


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A TCP connect to HOST:PORT first: ``ray.init`` waits minutes for a GCS that is not
    there; this says so in seconds."""
    import socket

    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--address {address!r}: expected auto or HOST:PORT (e.g. 10.0.0.5:6379)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ValueError(f"--address {address!r}: cannot connect to a Ray cluster "
                         f"({e.strerror or type(e).__name__} within {timeout_s:.0f} s)") from None


def _run_cell(nodeid: str, args: list[str], run_id: str, root: str) -> dict[str, Any]:
    """Ray task body: run one test with pytest in this worker, return its files."""
    import signal
    import socket
    import tempfile

    import pytest

    t0 = time.time()
    stage = Path(tempfile.gettempdir()) / f"harness-ray-{run_id}"
    cell = Path(tempfile.mkdtemp(prefix="cell-", dir=_mkdir(stage)))
    (cell / ".reference").symlink_to(_mkdir(stage / ".reference"))  # one reference per node
    os.environ["HARNESS_RUN_ID"] = run_id
    old_term = signal.getsignal(signal.SIGTERM)
    before = set(sys.modules)
    cwd = os.getcwd()
    try:
        os.chdir(root)
        code = int(pytest.main([nodeid, *args, f"--harness-out={cell}", "-q", "-p", "no:cacheprovider"]))
    finally:
        os.chdir(cwd)
        signal.signal(signal.SIGTERM, old_term)
        _forget_test_modules(before, Path(root).resolve())
    files = {p.name: p.read_text(encoding="utf-8", errors="replace") for p in cell.iterdir()
             if p.is_file() and (p.suffix == ".jsonl" or p.name == "run.json")}
    import shutil

    shutil.rmtree(cell, ignore_errors=True)
    return {"files": files, "node": socket.gethostname(), "exit_code": code, "seconds": time.time() - t0}


def _forget_test_modules(before: set[str], root: Path) -> None:
    """Drop the test modules and conftests a cell imported from under ``root``: the next
    cell this worker runs may collect another file of the same module name (a reused
    worker would otherwise fail with pytest's 'import file mismatch'). Installed packages
    (anything under the interpreter's prefix, such as a .venv inside the checkout) and
    ``harness`` itself stay imported."""
    keep = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
    for name in set(sys.modules) - before:
        f = getattr(sys.modules[name], "__file__", None)
        if not f or name == "harness" or name.startswith("harness."):
            continue
        parents = Path(f).resolve().parents
        if root in parents and not any(k in parents for k in keep):
            del sys.modules[name]


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def run_cells(ray: Any, cells: list[str], args: list[str], run_id: str, *, gpu: bool,
              cpus_per_cell: int = 1, root: str | None = None) -> list[CellResult]:
    """Submit every cell, wait for all, keep what failed with Ray's reason."""
    task = ray.remote(_run_cell).options(num_cpus=cpus_per_cell, num_gpus=1 if gpu else 0, max_retries=0)
    root = root or os.getcwd()
    refs = {task.remote(c, args, run_id, root): c for c in cells}
    out: dict[str, CellResult] = {}
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for ref in done:
            nodeid = refs[ref]
            try:
                got = ray.get(ref)
                out[nodeid] = CellResult(nodeid, got["files"], got["node"], got["exit_code"],
                                         seconds=got["seconds"])
            except Exception as e:  # RayTaskError, WorkerCrashedError, NodeDiedError, TaskCancelledError...
                msg = str(e).strip().splitlines()
                out[nodeid] = CellResult(nodeid, error=f"{type(e).__name__}: {msg[0] if msg else ''}"[:500])
    import shutil
    import tempfile

    # this node's staging directory (the shared reference, cells of killed workers); other
    # nodes keep theirs in their temporary directory
    shutil.rmtree(Path(tempfile.gettempdir()) / f"harness-ray-{run_id}", ignore_errors=True)
    return [out[c] for c in cells]


def write_results(run_dir: Path, results: list[CellResult], **info: Any) -> tuple[str, str]:
    """Write the cells' files into ``run_dir`` (one records/outcomes file per cell) and its
    run.json; returns (status, partial reason)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    nodes: dict[str, dict[str, Any]] = {}
    lost = []
    for k, r in enumerate(results, 1):
        if r.error:
            lost.append(r)
            append_jsonl(run_dir / f"outcomes-ray{k:04d}.jsonl",
                         [{"nodeid": r.nodeid, "when": "call", "outcome": "error", "duration": 0.0,
                           "message": f"ray executor: cell lost: {r.error}", "worker": "ray"}])
            continue
        for name, text in r.files.items():
            m = re.fullmatch(r"(records|outcomes)-.*\.jsonl", name)
            if m and text:
                with open(run_dir / f"{m.group(1)}-ray{k:04d}-{_tag(name)}.jsonl", "a", encoding="utf-8") as f:
                    f.write(text if text.endswith("\n") else text + "\n")
        cell_info = json.loads(r.files.get("run.json") or "{}")
        node = nodes.setdefault(r.node, {"cells": 0, "seconds": 0.0})
        node["cells"] += 1
        node["seconds"] = round(node["seconds"] + r.seconds, 3)
        for key in ("fingerprint", "device_class", "harness_version", "profile"):
            if cell_info.get(key) is not None:
                node[key] = cell_info[key]
    reason = "; ".join(f"{r.nodeid}: {r.error}" for r in lost)
    reason = f"{len(lost)} of {len(results)} cells lost ({reason})" if lost else ""
    fps = [n.get("fingerprint") for n in nodes.values()]
    first = next(iter(nodes.values()), {})
    write_run_info(run_dir, status="partial" if lost else "complete", partial_reason=reason, finished=time.time(),
                   nodes=nodes, profile=first.get("profile"), harness_version=first.get("harness_version"),
                   device_class=", ".join(sorted({n["device_class"] for n in nodes.values() if n.get("device_class")})),
                   **({"fingerprint": fps[0]} if fps and fps[0] and all(f == fps[0] for f in fps) else {}),
                   cells=len(results), cells_lost=len(lost),
                   cell_seconds={r.nodeid: round(r.seconds, 3) for r in results if not r.error}, **info)
    return ("partial" if lost else "complete"), reason


def _tag(name: str) -> str:
    return name.split("-", 1)[1].removesuffix(".jsonl")
