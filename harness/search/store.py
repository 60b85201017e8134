"""What a search leaves in its run directory, next to the usual ``records-*.jsonl`` and
``run.json`` (so ``harness report RUN`` shows every point):

- ``search.json``: the settings (objectives, constraints, seed, space, budget) and progress
  (wall time spent over every session, trials done, status); ``--resume`` reads it back.
- ``search/points.jsonl``: one line per evaluated spec (values, fidelity, violation), appended
  whole after its records are written: a resumed search never measures a spec twice.
- ``search/optuna.journal``: optuna's journal storage (the sampler's history).
- ``frontier.json``: the current frontier (``harness.search.frontier``), rewritten after
  every point, so an interrupted search still has one.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.paths import append_jsonl, atomic_write
from harness.search.frontier import Point, parse_budget

SEARCH_JSON = "search.json"
POINTS = Path("search") / "points.jsonl"
JOURNAL = Path("search") / "optuna.journal"


@dataclass(frozen=True)
class SearchConfig:
    """The settings of one search (validated on creation; stored in ``search.json``).

    ``budget_s`` bounds wall time (a trial starts only when the median trial so far still
    fits); ``trials`` bounds the sampler's trials (seeds and the reference not counted), the
    reproducible stop: the same seed and trial count give the same frontier, resumed or not."""

    model: str = "harness-tiny"
    space: str = ""
    objectives: tuple[str, ...] = ("size.bytes", "ppl.window")
    constraints: tuple[str, ...] = ()
    budget_s: float | None = None
    trials: int | None = None
    seed: int = 0
    proxy_tokens: int = 1024  # tokens of the proxy perplexity (a few windows)
    full_tokens: int | None = 8192  # tokens of the full protocol (the default suite's quick profile)
    margin: float = 0.05  # the proxy screens a point out only when it misses by more than this
    startup_trials: int = 10  # random trials before TPE models the history
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.budget_s is None and self.trials is None:
            raise ValueError("a search needs a stop: --budget (e.g. 20m) and/or --trials N")
        if self.budget_s is not None and not self.budget_s > 0:
            raise ValueError(f"budget {self.budget_s!r} s must be more than zero")
        if self.trials is not None and self.trials < 1:
            raise ValueError(f"--trials {self.trials}: expected an integer >= 1")
        if self.proxy_tokens < 128:
            raise ValueError(f"proxy_tokens={self.proxy_tokens} must be >= 128 (one window)")
        if self.full_tokens is not None and self.full_tokens < self.proxy_tokens:
            raise ValueError(f"full_tokens={self.full_tokens} must be >= proxy_tokens={self.proxy_tokens}")
        if not 0 <= self.margin < 1:
            raise ValueError(f"margin={self.margin} must be in [0, 1)")
        if self.startup_trials < 1:
            raise ValueError(f"startup_trials={self.startup_trials} must be >= 1")
        if not self.objectives:
            raise ValueError("empty objective list; give e.g. --objectives size.bytes,ppl.window")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        return cls(**d)


def budget_from(text: str | None) -> float | None:
    return None if text is None else parse_budget(text)


@dataclass
class SearchState:
    """``search.json``: the config and the progress of every session so far."""

    config: SearchConfig
    run_id: str
    spent_s: float = 0.0
    trials_done: int = 0
    status: str = "running"  # running | complete | infeasible | partial
    stop_reason: str = ""
    sessions: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "config": self.config.to_dict()}


def write_state(run_dir: Path, state: SearchState) -> None:
    atomic_write(run_dir / SEARCH_JSON, json.dumps(state.to_dict(), indent=1, sort_keys=True, default=str) + "\n")


def read_state(run_dir: str | Path) -> SearchState:
    """The stored search of ``run_dir``; a directory that holds none is a one-line error."""
    path = Path(run_dir) / SEARCH_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a search run directory (no {SEARCH_JSON})")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        cfg = SearchConfig.from_dict(d.pop("config"))
        names = {f.name for f in dataclasses.fields(SearchState)} - {"config"}
        return SearchState(config=cfg, **{k: v for k, v in d.items() if k in names})
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"{path} is corrupt ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def point_to_dict(p: Point) -> dict[str, Any]:
    return dataclasses.asdict(p)


def append_point(run_dir: Path, p: Point) -> None:
    append_jsonl(run_dir / POINTS, [point_to_dict(p)], fsync=True)


def read_points(run_dir: str | Path) -> list[Point]:
    """Every point written so far (a torn last line, from an interrupted append, is skipped:
    that spec is measured again)."""
    path = Path(run_dir) / POINTS
    out: list[Point] = []
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            d = json.loads(line)
            out.append(Point(**d))
        except (json.JSONDecodeError, TypeError):
            continue
    return out
