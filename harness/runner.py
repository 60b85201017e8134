"""Run directories, run ids, and invoking pytest on a suite.

A run directory ``reports/<run-id>/`` holds everything one suite run produced:
``records-<worker>.jsonl`` (one per pytest-xdist worker / shard), ``outcomes-<shard>.jsonl``
(the pytest outcome of each test, written by the controller as it happens),
``run.json`` (status, timing, environment) and, once rendered, ``report.html``.
A run whose ``run.json`` says ``running`` (killed) or ``partial`` (Ctrl-C, ``-x``) is
reported as partial; records already written are kept.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness.paths import atomic_write, safe_component

RUN_JSON = "run.json"


def new_run_id() -> str:
    """Sortable, collision-safe id: ``20261123-071502-3f9a``."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


def write_run_info(run_dir: str | Path, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into ``run.json`` (atomic replace)."""
    path = Path(run_dir) / RUN_JSON
    info = read_run_info(run_dir)
    info.update(fields)
    atomic_write(path, json.dumps(info, indent=2, default=str, sort_keys=True) + "\n")
    return info


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_JSON
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return info if isinstance(info, dict) else {}
    except (json.JSONDecodeError, OSError):
        return {}


def run_info_problem(run_dir: str | Path) -> str | None:
    """Why an existing run.json cannot be read (None when it is fine or absent)."""
    path = Path(run_dir) / RUN_JSON
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"{path} is corrupt ({str(e).splitlines()[0]})"
    except OSError as e:
        return f"{path} cannot be read ({e.strerror})"
    return None if isinstance(info, dict) else f"{path} is corrupt (not a JSON object)"


def run_status(run_dir: str | Path) -> tuple[str, str]:
    """(status, why) with status ``complete`` or ``partial``."""
    problem = run_info_problem(run_dir)
    if problem:
        return "partial", f"{problem}: the run's status is unknown"
    info = read_run_info(run_dir)
    st = info.get("status")
    if st == "complete":
        return "complete", ""
    if st == "partial":
        return "partial", str(info.get("partial_reason") or "the run stopped early")
    if st == "running":
        return "partial", "the run did not finish (killed or still running)"
    return "partial", "no run.json: the run's pytest session never finished"


def append_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append whole lines with one write (crash leaves whole lines only)."""
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


_SEVERITY = {"error": 4, "failed": 3, "xpassed": 2, "xfailed": 2, "skipped": 1, "passed": 0}


def load_outcomes(run_dir: str | Path) -> list[dict[str, Any]]:
    """Pytest outcome per test of a run (the most severe phase wins: a passing call with
    a failing teardown is an error)."""
    out: dict[str, dict[str, Any]] = {}
    for f in sorted(Path(run_dir).glob("outcomes-*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(row, dict) or "nodeid" not in row:
                continue
            prev = out.get(row["nodeid"])
            if prev is None or _SEVERITY.get(row.get("outcome"), 0) >= _SEVERITY.get(prev.get("outcome"), 0):
                out[row["nodeid"]] = row
    return list(out.values())


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def resolve_suite(name: str) -> str:
    """A suite name (``default``), a file or a directory -> a path pytest accepts."""
    p = Path(name)
    if p.exists() or "::" in name:
        return name
    safe_component(name, "suite")
    for root in (Path.cwd(), repo_root()):
        cand = root / "suites" / f"test_{name}.py"
        if cand.is_file():
            return str(cand)
    known = sorted(q.stem[5:] for root in {Path.cwd(), repo_root()}
                   for q in (root / "suites").glob("test_*.py"))
    raise ValueError(f"unknown suite {name!r}: no file or suites/test_{name}.py "
                     f"(known: {', '.join(dict.fromkeys(known)) or 'none'})")


def pytest_command(suites: list[str], run_dir: Path, *, quick: bool, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", *suites, f"--harness-out={run_dir}"]
    if quick:
        cmd.append("--harness-quick")
    return cmd + list(extra)


def run_pytest(cmd: list[str], run_id: str | None = None) -> tuple[int, int | None]:
    """Run pytest as a child and return ``(exit code, signal received or None)``.

    The child runs in its own process group, so a terminal's Ctrl-C reaches only this
    process; SIGINT and SIGTERM (what CI timeouts and supervisors send to the process
    they started) are forwarded once to the child's whole group, and we wait for its
    clean shutdown (the plugin marks run.json partial). Nothing of the group outlives us."""
    env = {**os.environ, **({"HARNESS_RUN_ID": run_id} if run_id else {})}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    received: list[int] = []

    def forward(signum: int, _frame) -> None:
        received.append(signum)
        _signal_group(proc.pid, signum)

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        _reap_group(proc.pid)
    return code, (received[0] if received else None)


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _reap_group(pgid: int, grace_s: float = 10.0) -> None:
    """Wait for the rest of the child's process group (xdist workers) to exit; kill what
    is still alive after ``grace_s`` so no orphan keeps writing into the run directory."""
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.1)
    _signal_group(pgid, signal.SIGKILL)


def mark_interrupted(run_dir: str | Path, signum: int) -> None:
    """After a signal: a run.json that still says ``running`` (the child was killed before
    it could finish) becomes ``partial`` with the reason."""
    info = read_run_info(run_dir)
    if Path(run_dir).is_dir() and info.get("status") in (None, "running"):
        write_run_info(run_dir, status="partial", finished=time.time(),
                       partial_reason=f"harness run received {signal.Signals(signum).name}; stopped before all "
                                      f"tests ran")
