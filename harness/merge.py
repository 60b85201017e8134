"""Combining run directories: shards of one CI matrix, or one suite run on several machines.

``harness merge OUT DIR...`` and every command that accepts several run directories read
them through here. Records are de-duplicated by ``record_id`` (a shard that was copied
twice counts once); the directories must come from one suite, one profile and one harness
version, or the merge is refused with one line that names them. Each source's run.json
(its fingerprint, device class, shard and status) is kept under ``merged_from``, so every
record still traces to the machine that measured it through its ``run_id``. The merged run
is partial when any source was, or when shards of an ``N``-way split are missing.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.records import LoadedRecords, Record, load_records, record_files
from harness.rundir import RUN_JSON, new_run_id, read_run_info, run_info_problem, run_status


@dataclass
class Source:
    """One input run directory, read once."""

    path: Path
    info: dict[str, Any]
    records: list[Record]
    status: str
    why: str
    skipped: list[str] = field(default_factory=list)

    @property
    def suites(self) -> set[str]:
        return {r.suite for r in self.records if r.suite}

    @property
    def profile(self) -> str | None:
        return self.info.get("profile") or next((r.extra.get("profile") for r in self.records
                                                 if r.extra.get("profile")), None)

    @property
    def version(self) -> str | None:
        return self.info.get("harness_version") or (self.info.get("fingerprint") or {}).get("harness")

    @property
    def shard(self) -> tuple[int, int] | None:
        s = self.info.get("shard")
        try:
            i, n = (int(x) for x in str(s).split("/"))
            return i, n
        except ValueError:
            return None

    def summary(self) -> dict[str, Any]:
        """What merged run.json keeps of this source."""
        keep = ("run_id", "status", "partial_reason", "shard", "profile", "harness_version", "fingerprint",
                "device_class", "started", "finished", "exitstatus", "args", "merged_from", "executor")
        return {"dir": str(self.path), "records": len(self.records),
                **{k: self.info[k] for k in keep if k in self.info}}


def read_source(path: str | Path, *, skip_bad_lines: bool = False) -> Source:
    p = Path(path)
    records = load_records(p, skip_bad_lines=skip_bad_lines)  # missing/empty: one-line error
    status, why = run_status(p)
    return Source(p, read_run_info(p), list(records), status, why, list(records.skipped))


def _names(sources: list[Source], value) -> str:
    return "; ".join(f"{s.path} ({value(s) or '?'})" for s in sources)


def check_compatible(sources: list[Source]) -> tuple[list[str], str]:
    """(warnings, partial reason) of merging ``sources``; a ValueError when they come from
    different harness versions, suites or profiles."""
    versions = {s.version for s in sources if s.version}
    if len(versions) > 1:
        raise ValueError(f"run directories come from different harness versions: "
                         f"{_names(sources, lambda s: s.version)}")
    profiles = {s.profile for s in sources if s.profile}
    if len(profiles) > 1:
        raise ValueError(f"run directories ran different profiles: {_names(sources, lambda s: s.profile)}")
    shards = [s.shard for s in sources]
    one_split = all(shards) and len({n for _, n in shards}) == 1  # parts of one N-way split
    suites = {frozenset(s.suites) for s in sources if s.suites}
    if (len(set().union(*suites)) > 1 if one_split and suites else len(suites) > 1):
        raise ValueError("run directories ran different suites: "
                         f"{_names(sources, lambda s: ','.join(sorted(s.suites)))}")
    warnings = [f"{s.path}: version unknown (no harness_version in run.json)" for s in sources if not s.version]
    reasons = [f"{s.path} is partial ({s.why})" for s in sources if s.status != "complete"]
    if one_split:
        n = shards[0][1]
        seen = [i for i, _ in shards]
        missing = [f"{i}/{n}" for i in range(1, n + 1) if i not in seen]
        if missing:
            reasons.append(f"shard(s) {', '.join(missing)} missing")
        dup = sorted({i for i in seen if seen.count(i) > 1})
        warnings += [f"shard {i}/{n} given more than once" for i in dup]
    return warnings, "; ".join(reasons)


def load_many(dirs: list[str | Path], *, skip_bad_lines: bool = False) -> tuple[LoadedRecords, list[str]]:
    """Records of several run directories as one run (checked and de-duplicated), and the
    warnings; one directory reads exactly as ``load_records`` does."""
    if len(dirs) == 1:
        return load_records(dirs[0], skip_bad_lines=skip_bad_lines), []
    sources = [read_source(d, skip_bad_lines=skip_bad_lines) for d in dirs]
    warnings, partial = check_compatible(sources)
    out = LoadedRecords(_dedupe(sources))
    out.skipped = [m for s in sources for m in s.skipped]
    return out, warnings + ([f"partial: {partial}"] if partial else [])


def _dedupe(sources: list[Source]) -> list[Record]:
    seen: set[str] = set()
    out = []
    for s in sources:
        for r in s.records:
            if r.record_id not in seen:
                seen.add(r.record_id)
                out.append(r)
    return out


def is_run_dir(path: str | Path) -> bool:
    """A directory the harness wrote (run.json or records files): the only kind of
    existing OUT that ``--overwrite`` may replace."""
    p = Path(path)
    if not p.is_dir():
        return False
    return bool(record_files(p)) or (p / RUN_JSON).is_file() and run_info_problem(p) is None \
        and "run_id" in read_run_info(p)


def check_out(out: Path, dirs: list[Path], overwrite: bool) -> None:
    """Refuse an OUT that would lose data: an existing path (unless a harness run directory
    and ``overwrite``), or one inside, or holding, an input."""
    ro = out.resolve()
    for d in dirs:
        rd = d.resolve()
        if ro == rd or rd in ro.parents or ro in rd.parents:
            raise ValueError(f"OUT {str(out)!r} overlaps the input {str(d)!r}; choose a new directory")
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise ValueError(f"OUT {str(out)!r} already exists; pass --overwrite to replace a harness run "
                             f"directory")
        if out.is_symlink() or not is_run_dir(out):
            raise ValueError(f"OUT {str(out)!r} exists and is not a harness run directory; refusing to "
                             f"overwrite it")


@dataclass
class MergeResult:
    out: Path
    records: int
    duplicates: int
    status: str
    partial_reason: str
    warnings: list[str]


def merge_runs(out: str | Path, dirs: list[str | Path], *, overwrite: bool = False,
               skip_bad_lines: bool = False) -> MergeResult:
    """Write the merge of ``dirs`` to ``out``: built in a hidden sibling, then renamed into
    place, so OUT is either absent/old or the whole merge."""
    out, paths = Path(out), [Path(d) for d in dirs]
    if not paths:
        raise ValueError("harness merge needs at least one run directory")
    check_out(out, paths, overwrite)
    sources = [read_source(d, skip_bad_lines=skip_bad_lines) for d in paths]
    warnings, partial = check_compatible(sources)
    warnings += [f"damaged records: {m}" for s in sources for m in s.skipped]
    tmp = out.parent / f".{out.name}.merge-{secrets.token_hex(4)}"
    tmp.mkdir(parents=True)
    try:
        total, seen = 0, set()
        for k, s in enumerate(sources, 1):
            rows = [r for r in s.records if r.record_id not in seen]
            seen.update(r.record_id for r in rows)
            total += len(rows)
            _write_lines(tmp / f"records-from{k}.jsonl", (json.dumps(r.to_dict(), sort_keys=True, default=str)
                                                         for r in rows))
            outcomes = [line for f in sorted(s.path.glob("outcomes-*.jsonl"))
                        for line in f.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
            _write_lines(tmp / f"outcomes-from{k}.jsonl", outcomes)
        _write_lines(tmp / RUN_JSON, [json.dumps(_merged_info(sources, partial), indent=2, sort_keys=True,
                                                 default=str)])
        if out.exists():
            old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    dup = sum(len(s.records) for s in sources) - total
    return MergeResult(out, total, dup, "partial" if partial else "complete", partial, warnings)


def _write_lines(path: Path, lines) -> None:
    text = "".join(f"{line}\n" for line in lines)
    if text:
        path.write_text(text, encoding="utf-8")


def _merged_info(sources: list[Source], partial: str) -> dict[str, Any]:
    fps = [s.info.get("fingerprint") for s in sources]
    same_fp = fps[0] if fps[0] and all(f == fps[0] for f in fps) else None
    started = [s.info["started"] for s in sources if isinstance(s.info.get("started"), (int, float))]
    finished = [s.info["finished"] for s in sources if isinstance(s.info.get("finished"), (int, float))]
    first = sources[0]
    info: dict[str, Any] = {
        "run_id": "merged-" + new_run_id(), "status": "partial" if partial else "complete",
        "partial_reason": partial, "profile": first.profile, "harness_version": first.version,
        "suites": sorted(set().union(*(s.suites for s in sources))),
        "models": sorted({r.model for s in sources for r in s.records if r.model}),
        "baselines": first.info.get("baselines"), "shard": None, "merged": time.time(),
        "started": min(started) if started else None, "finished": max(finished) if finished else None,
        "device_class": ", ".join(sorted({r.device_class for s in sources for r in s.records if r.device_class})),
        "merged_from": [s.summary() for s in sources],
        "args": ["harness", "merge", *[str(s.path) for s in sources]],
    }
    if same_fp:
        info["fingerprint"] = same_fp
    return info
