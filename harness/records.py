"""The Record row and its JSONL storage (metric metadata: ``harness.metrics``).

Every figure the harness produces is one Record. Writers append one JSON line per record
with a single ``write`` on an ``O_APPEND`` descriptor followed by ``fsync``, so a crash or
Ctrl-C leaves only whole lines; each pytest-xdist worker writes its own file
(``records-<worker>.jsonl``) and ``load_records`` merges them, dropping duplicates by
``record_id``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness.metrics import METRICS, MetricInfo

Status = Literal["ok", "na", "error"]


def metric_info(name: str) -> MetricInfo:
    return METRICS.get(name)


MAX_SAMPLES = 4096  # per list: a few tens of KB per record at most


def compact_samples(samples: dict[str, Any]) -> dict[str, list[float]]:
    """Bounded, compact raw samples: at most MAX_SAMPLES values per list (an evenly spaced
    subset beyond that, noted by the list's own length), floats to 7 significant digits."""
    out: dict[str, list[float]] = {}
    for key, values in samples.items():
        vals = list(values)
        if len(vals) > MAX_SAMPLES:
            step = len(vals) / MAX_SAMPLES
            vals = [vals[int(i * step)] for i in range(MAX_SAMPLES)]
        out[key] = [v if isinstance(v, int) else float(f"{float(v):.7g}") for v in vals]
    return out


@dataclass
class Record:
    """One measured figure (or an N/A with its reason)."""

    metric: str
    value: float | None
    unit: str = ""
    higher_is_better: bool | None = None
    n: int = 1
    spread: dict[str, float] = field(default_factory=dict)  # e.g. {"p10": .., "p90": ..}, derived from samples
    # Raw samples the figure was computed from, so two runs can be compared statistically
    # (per-repeat latencies; per-window NLL with window ids; per-window top-1 agreement).
    samples: dict[str, list[float]] = field(default_factory=dict)
    status: Status = "ok"
    reason: str = ""
    model: str = ""
    technique: str = "none"
    spec: str = "none"
    config: dict[str, Any] = field(default_factory=dict)
    storage: str = ""
    suite: str = ""
    test_id: str = ""
    run_id: str = ""
    device: str = ""
    device_class: str = ""
    timestamp: float = field(default_factory=time.time)
    extra: dict[str, Any] = field(default_factory=dict)
    record_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        info = METRICS.get(self.metric)  # unknown metric -> clear error
        if not self.unit:
            self.unit = info.unit
        if self.higher_is_better is None:
            self.higher_is_better = info.higher_is_better
        if self.value is not None:
            self.value = float(self.value)
            if not math.isfinite(self.value) and self.status == "ok":
                self.status, self.reason = "error", self.reason or f"non-finite value {self.value}"
        if self.status == "na" and not self.reason:
            raise ValueError(f"N/A record for {self.metric} needs a reason")
        if self.samples:
            self.samples = compact_samples(self.samples)

    @classmethod
    def na(cls, metric: str, reason: str, **kw: Any) -> Record:
        return cls(metric=metric, value=None, status="na", reason=reason, **kw)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["value"] is not None and not math.isfinite(d["value"]):
            d["value"] = None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def with_context(self, **kw: Any) -> Record:
        return dataclasses.replace(self, **{k: v for k, v in kw.items() if v is not None})


class RecordWriter:
    """Append-only JSONL writer; one per process (xdist worker)."""

    def __init__(self, directory: str | Path, worker: str | None = None) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        from harness.paths import safe_component

        worker = safe_component(worker or os.environ.get("PYTEST_XDIST_WORKER", "main"), "worker tag")
        self.path = self.dir / f"records-{worker}.jsonl"
        self.count = 0

    def write(self, records: Iterable[Record]) -> None:
        from harness.paths import append_jsonl

        self.count += append_jsonl(self.path, [r.to_dict() for r in records], fsync=True)


class NoRecordsError(ValueError):
    """A run directory that holds no records."""


class RecordsError(ValueError):
    """A damaged records file: a bad line that is not a torn final line."""


class LoadedRecords(list):
    """The records of a run (a plain list) plus ``skipped``: one message per damaged line
    that was left out, so every report can say how much was lost."""

    skipped: list[str]


def record_files(run_dir: str | Path) -> list[Path]:
    return sorted(Path(run_dir).glob("records-*.jsonl"))


def _parse_line(line: str) -> Record:
    d = json.loads(line)
    if not isinstance(d, dict):
        raise ValueError("not a JSON object")
    return Record.from_dict(d)


def load_records(run_dir: str | Path, *, skip_bad_lines: bool = False) -> LoadedRecords:
    """All records of a run directory, merged across workers, duplicates dropped.

    A torn final line (a writer interrupted mid-line: the file does not end in a newline)
    is skipped with a message in ``.skipped``. A bad line anywhere else is damage, not an
    interruption: a RecordsError naming file and line, unless ``skip_bad_lines``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NoRecordsError(f"run directory {str(run_dir)!r} does not exist")
    files = record_files(run_dir)
    if not files:
        raise NoRecordsError(f"run directory {str(run_dir)!r} has no records-*.jsonl files")
    seen: set[str] = set()
    out = LoadedRecords()
    out.skipped = []
    for f in files:
        text = f.read_text(encoding="utf-8", errors="replace")
        lines = text.split("\n")
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = _parse_line(line)
            except (json.JSONDecodeError, TypeError, ValueError) as e:
                why = str(e).splitlines()[0] if str(e) else type(e).__name__
                if i == len(lines):  # no newline after it: the writer was interrupted
                    out.skipped.append(f"{f}:{i}: torn final line skipped (an interrupted write)")
                    continue
                if not skip_bad_lines:
                    raise RecordsError(f"{f}:{i}: not a valid record ({why}); pass --skip-bad-lines to "
                                       f"skip damaged lines") from None
                out.skipped.append(f"{f}:{i}: damaged line skipped ({why})")
                continue
            if rec.record_id not in seen:
                seen.add(rec.record_id)
                out.append(rec)
    if not out:
        raise NoRecordsError(f"run directory {str(run_dir)!r} has record files but no valid records")
    return out


def to_dataframe(records: Iterable[Record]):
    """Records as a pandas DataFrame (one row per record)."""
    import pandas as pd

    return pd.DataFrame([r.to_dict() for r in records])


def load_dataframe(run_dir: str | Path):
    return to_dataframe(load_records(run_dir))
