"""Invoking pytest on a suite for ``harness run``: suite names, the command line, the child
process and its signals. What a run leaves on disk is read and written by ``harness.rundir``."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness.paths import safe_component


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


def run_pytest(cmd: list[str], run_id: str | None = None, *, cwd: Path | None = None,
               env: dict[str, str] | None = None) -> tuple[int, int | None]:
    """Run pytest as a child and return ``(exit code, signal received or None)``.

    The child runs in its own process group, so a terminal's Ctrl-C reaches only this
    process; SIGINT and SIGTERM (what CI timeouts and supervisors send to the process
    they started) are forwarded once to the child's whole group, and we wait for its
    clean shutdown (the plugin marks run.json partial). Nothing of the group outlives us.
    ``cwd`` / ``env``: where and with what environment the child runs (``--against``'s base tree)."""
    env = {**(env if env is not None else os.environ), **({"HARNESS_RUN_ID": run_id} if run_id else {})}
    received: list[int] = []
    child: list[subprocess.Popen] = []

    def forward(signum: int, _frame) -> None:
        received.append(signum)
        if child:
            _signal_group(child[0].pid, signum)

    # Handlers first, then the child: a signal this process inherited as *ignored* (a
    # background job of a non-interactive shell ignores SIGINT) would stay ignored in the
    # child too, while a handler is reset to the default at exec.
    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        child.append(subprocess.Popen(cmd, env=env, cwd=cwd, start_new_session=True))
        if received:  # a signal that arrived while the child was starting
            _signal_group(child[0].pid, received[0])
        code = child[0].wait()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if child:
            _reap_group(child[0].pid)
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
