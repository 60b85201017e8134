"""Run directories: what one suite run leaves on disk, and how to read it back.

A run directory ``reports/<run-id>/`` holds ``records-<worker>.jsonl`` (one per pytest-xdist
worker / shard), ``outcomes-<shard>.jsonl`` (the pytest outcome of each test, written by the
controller as it happens), ``run.json`` (status, timing, environment) and, once rendered,
``report.html``; ``verdicts.jsonl`` (``harness.baselines.verdicts``) and ``.reference/`` (the
uncompressed reference's records) once the run judged itself. A run whose ``run.json`` says
``running`` (killed) or ``partial`` (Ctrl-C, ``-x``) is reported as partial; records already
written are kept. This module only reads and
writes those files; ``harness.runner`` starts pytest, the reports read through here.
"""
from __future__ import annotations

import dataclasses
import json
import re
import secrets
import signal
import time
from pathlib import Path
from typing import Any

from harness.paths import atomic_write

RUN_JSON = "run.json"
REFERENCE_DIR = ".reference"  # the uncompressed reference's records, measured once per run


def new_run_id() -> str:
    """Sortable, collision-safe id: ``20261123-071502-3f9a``."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


def harness_version() -> str | None:
    """Installed harness version, kept in run.json (``harness merge`` refuses to mix versions)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llm-compression-harness")
    except PackageNotFoundError:
        return None


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


def reference_path(run_dir: str | Path, model: str, profile: str, device: str) -> Path:
    """Where a run keeps the reference records of ``model`` (measured once, shared by workers)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model)
    return Path(run_dir) / REFERENCE_DIR / f"{slug}-{profile}-{device}.json"


def read_reference(run_dir: str | Path) -> list:
    """Every reference record a run stored (``reference_path``), each with its profile in
    ``extra["profile"]``; damaged files are skipped (they only ever inform host drift)."""
    from harness.records import Record

    out = []
    for path in sorted((Path(run_dir) / REFERENCE_DIR).glob("*.json")):
        profile = path.stem.rsplit("-", 2)[-2] if path.stem.count("-") >= 2 else "full"
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            recs = [Record.from_dict(d) for d in stored.values()]
        except (OSError, ValueError, TypeError, AttributeError):
            continue
        out += [dataclasses.replace(r, extra={**r.extra, "profile": profile}) for r in recs]
    return out


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


def mark_interrupted(run_dir: str | Path, signum: int) -> None:
    """After a signal: a run.json that still says ``running`` (the child was killed before
    it could finish) becomes ``partial`` with the reason."""
    info = read_run_info(run_dir)
    if Path(run_dir).is_dir() and info.get("status") in (None, "running"):
        write_run_info(run_dir, status="partial", finished=time.time(),
                       partial_reason=f"harness run received {signal.Signals(signum).name}; stopped before all "
                                      f"tests ran")
