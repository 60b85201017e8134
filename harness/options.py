"""The settings of a measuring run, validated once on creation and shared by the pytest
plugin (``--harness-*``) and the command line (``harness eval``, ``harness run``).

Frozen dataclasses: a bad value fails when the options are made, with a one-line
ValueError naming the value and what is allowed, before a model loads or a test runs.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.baselines.file import Tolerance
from harness.baselines.verdicts import GatePolicy
from harness.config import EvalConfig


def parse_threads(text: str | int | None, flag: str = "--harness-threads") -> int | None:
    """``'auto'``/None -> None (usable cores), an integer >= 1 -> itself; else ValueError."""
    if text is None or text == "auto":
        return None
    s = str(text)
    if not (s.isdigit() and int(s) >= 1):
        raise ValueError(f"{flag} {text!r}: expected 'auto' or an integer >= 1")
    return int(s)


def auto_threads(workers: int = 1) -> int:
    """Usable cores shared among xdist workers (oversubscribed OpenMP threads spin and
    make CPU latency several times slower and noisier)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, workers))


@dataclass(frozen=True)
class EvalOptions:
    """What the accuracy protocols score and where calibration comes from: a token budget,
    a bundled split or a text file, a calibration text file, and lm-eval tasks. Files are
    read and tasks looked up on creation, so a typo fails at once, not once per test."""

    max_tokens: int | None = None
    split: str | None = None  # None: EvalConfig's default (validation)
    text: str | None = None
    calibration_text: str | None = None
    lm_eval_tasks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "lm_eval_tasks", tuple(self.lm_eval_tasks))
        EvalConfig(**self.eval_kwargs())
        from harness.models.textfile import read_text

        for f in (self.text, self.calibration_text):
            if f is not None:
                read_text(f)
        if self.lm_eval_tasks:  # unknown task or missing dataset: one line, before any work
            from harness.measure.tasks import check_tasks

            check_tasks(list(self.lm_eval_tasks))

    @staticmethod
    def tasks_of(text: str | None) -> tuple[str, ...]:
        """``"a, b"`` -> ("a", "b")."""
        return tuple(t.strip() for t in (text or "").split(",") if t.strip())

    def eval_kwargs(self) -> dict[str, Any]:
        """The ``EvalConfig`` fields these options set."""
        return {k: v for k, v in (("max_tokens", self.max_tokens), ("split", self.split), ("text", self.text))
                if v is not None}

    def eval_config(self, **defaults: Any) -> EvalConfig:
        """An ``EvalConfig`` from ``defaults`` overridden by what these options set."""
        return EvalConfig(**{**defaults, **self.eval_kwargs()})

    @property
    def task_metrics(self) -> list[str]:
        from harness.metrics import TASK_FIGURES

        return [f"task.{t}.{w}" for t in self.lm_eval_tasks for w in TASK_FIGURES]


@dataclass(frozen=True)
class Options:
    """One pytest process's measuring run: where it writes, what it judges against and how
    it gates, which models on which device, the profile, the shard and the threads."""

    out: Path
    run_id: str
    baselines: Path
    gate: bool = False
    fail_on: Mapping[str, Tolerance] = field(default_factory=dict)
    strict: bool = False
    device: str = "auto"
    models: tuple[str, ...] = ("harness-tiny",)
    quick: bool = False
    shard: tuple[int, int] | None = None
    markdown: Path | None = None
    threads: int | None = None  # None: usable cores / xdist workers
    worker: str = "main"  # xdist worker id of this process
    workers: int = 1  # xdist worker count
    eval: EvalOptions = field(default_factory=EvalOptions)

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(self.models))
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device {self.device!r}: expected auto, cpu or cuda")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads={self.threads}: expected an integer >= 1")
        if self.shard is not None and not (1 <= self.shard[0] <= self.shard[1]):
            raise ValueError(f"shard {self.shard[0]}/{self.shard[1]}: expected I/N with 1 <= I <= N")

    @property
    def policy(self) -> GatePolicy:
        return GatePolicy(self.gate, self.strict, dict(self.fail_on))

    @property
    def gating(self) -> bool:
        return self.policy.gating

    @property
    def profile(self) -> str:
        return "quick" if self.quick else "full"

    @property
    def worker_tag(self) -> str:
        w = self.worker
        return f"shard{self.shard[0]}of{self.shard[1]}-{w}" if self.shard else w

    def with_eval(self, **changes: Any) -> Options:
        """These options with the evaluation settings changed (a suite's own fixed budget)."""
        return dataclasses.replace(self, eval=dataclasses.replace(self.eval, **changes))
