"""Shards: a deterministic, balanced split of a suite's collected tests (``--harness-shard I/N``).

Every shard job of a CI matrix collects the same tests and must pick disjoint parts that
together cover them all, with no coordination between the jobs. So the split depends only
on the test ids and a durations table that every job sees alike (a file in the checkout,
``.harness-durations.json``, or one given with ``--harness-durations``): tests are placed
longest first on the shard with the least time so far (the LPT rule), ties broken by test
id, so the same inputs always give the same split. A test with no recorded time weighs the
mean of the known ones; with no times at all, each weighs the same and shards get equal
counts. ``harness durations`` writes that file from earlier run directories.
"""
from __future__ import annotations

import heapq
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from harness.paths import atomic_write

DURATIONS_FILE = ".harness-durations.json"


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"2/4"`` -> ``(2, 4)``; None stays None; anything else is a one-line ValueError."""
    if text is None:
        return None
    try:
        i, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise ValueError(f"shard {text!r}: expected I/N with integers, e.g. 1/4") from None
    if not (n >= 1 and 1 <= i <= n):
        raise ValueError(f"shard {text!r}: need 1 <= I <= N (shards are numbered from 1)")
    return i, n


def split(test_ids: Sequence[str], n: int, durations: dict[str, float] | None = None) -> list[list[str]]:
    """``n`` lists of test ids (each in the input order) with balanced total time."""
    durations = durations or {}
    known = [float(durations[t]) for t in test_ids if t in durations and durations[t] >= 0]
    default = sum(known) / len(known) if known else 1.0
    weight = {t: float(durations.get(t, default)) for t in test_ids}
    heap = [(0.0, k) for k in range(n)]
    owner: dict[str, int] = {}
    for t in sorted(set(test_ids), key=lambda t: (-weight[t], t)):
        total, k = heapq.heappop(heap)
        owner[t] = k
        heapq.heappush(heap, (total + weight[t], k))
    out: list[list[str]] = [[] for _ in range(n)]
    for t in test_ids:
        out[owner[t]].append(t)
    return out


def select(test_ids: Sequence[str], shard: tuple[int, int], durations: dict[str, float] | None = None) -> set[str]:
    """The test ids shard ``(i, n)`` runs."""
    i, n = shard
    return set(split(test_ids, n, durations)[i - 1])


def durations_from_runs(run_dirs: Iterable[str | Path]) -> dict[str, float]:
    """Wall time of each test's call phase in earlier runs (``outcomes-*.jsonl``); the
    latest directory given wins for a test measured more than once."""
    out: dict[str, float] = {}
    for d in run_dirs:
        for f in sorted(Path(d).glob("outcomes-*.jsonl")):
            for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and row.get("when") == "call" and isinstance(row.get("duration"),
                                                                                       (int, float)):
                    out[str(row["nodeid"])] = float(row["duration"])
    return out


def load_durations(path: str | Path) -> dict[str, float]:
    """A durations file (``{test id: seconds}``) or a run directory; one-line ValueError
    when it is neither."""
    p = Path(path)
    if p.is_dir():
        return durations_from_runs([p])
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"durations {str(p)!r} does not exist (a JSON file of test id -> seconds, "
                         f"or a run directory)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"durations {str(p)!r} is not a JSON file ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict) or not all(isinstance(v, (int, float)) for v in data.values()):
        raise ValueError(f"durations {str(p)!r}: expected a JSON object of test id -> seconds")
    return {str(k): float(v) for k, v in data.items()}


def write_durations(path: str | Path, durations: dict[str, float]) -> Path:
    """Write a durations file (sorted, so a committed file diffs cleanly)."""
    p = Path(path)
    atomic_write(p, json.dumps({k: round(v, 3) for k, v in sorted(durations.items())}, indent=1) + "\n")
    return p
