"""Objectives, constraints, budgets and the Pareto frontier of a search: plain Python (no
torch, no optuna), so the report and ``harness search --show`` read a run without either.

- An objective is a registered metric; its direction is the metric's ``higher_is_better``.
- A constraint is ``METRIC<=VALUE`` or ``METRIC>=VALUE``; VALUE is absolute (``2e6``) or a
  change against the run's own uncompressed reference (``+5%``, ``-50%``).
- The frontier is the set of feasible points that no other feasible point dominates (no
  worse on every objective, better on one), computed here rather than taken from the
  sampler so a resumed run and an uninterrupted one are compared by one rule.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.metrics import METRICS
from harness.paths import atomic_write

FRONTIER_JSON = "frontier.json"


@dataclass(frozen=True)
class Objective:
    """One metric to optimise, in its registered direction."""

    metric: str
    higher_is_better: bool

    @property
    def direction(self) -> str:
        return "maximize" if self.higher_is_better else "minimize"


def parse_objectives(text: str | Sequence[str], kind: str = "causal-lm") -> list[Objective]:
    """``"size.bytes,ppl.window"`` -> objectives; an unknown metric (did-you-mean), one that
    does not apply to ``kind``, a repeat or an empty list is a one-line ValueError."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if not names:
        raise ValueError("empty objective list; give e.g. --objectives size.bytes,ppl.window")
    out = []
    for n in names:
        m = METRICS.get(n)
        if kind not in m.kinds:
            raise ValueError(f"objective {n!r} applies only to {' and '.join(m.kinds)} models, not {kind}")
        if any(o.metric == n for o in out):
            raise ValueError(f"objective {n!r} is given twice")
        out.append(Objective(n, m.higher_is_better))
    return out


_CONSTRAINT = re.compile(r"\s*([A-Za-z][A-Za-z0-9_.\-]*)\s*(<=|>=)\s*([+-]?)(\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)(%?)\s*")
_FORM = ("expected METRIC<=VALUE or METRIC>=VALUE, VALUE a number or a change against the uncompressed "
         "reference such as +5% or -50%")


@dataclass(frozen=True)
class Constraint:
    """``metric op value``; ``relative``: value is a fraction of change vs the reference."""

    metric: str
    op: str  # "<=" or ">="
    value: float
    relative: bool
    text: str

    def bound(self, reference: float | None) -> float:
        if not self.relative:
            return self.value
        if reference is None:
            raise ValueError(f"constraint {self.text!r} is relative but the reference's {self.metric} "
                             f"was not measured")
        return reference * (1 + self.value)

    def violation(self, value: float | None, reference: float | None) -> float:
        """How far ``value`` is outside the bound, as a fraction of the bound (<= 0: met;
        an unmeasured value is infinitely far)."""
        if value is None:
            return float("inf")
        b = self.bound(reference)
        gap = value - b if self.op == "<=" else b - value
        return gap / abs(b) if b else gap


def parse_constraint(text: str, kind: str = "causal-lm") -> Constraint:
    """Parse one constraint; a malformed one or an unknown metric is a one-line ValueError."""
    m = _CONSTRAINT.fullmatch(text or "")
    if not m:
        raise ValueError(f"constraint {text!r}: {_FORM}")
    name, op, sign, num, pct = m.groups()
    info = METRICS.get(name)
    if kind not in info.kinds:
        raise ValueError(f"constraint {text!r}: {name} applies only to {' and '.join(info.kinds)} models, "
                         f"not {kind}")
    value = float(sign + num)
    if pct:
        return Constraint(name, op, value / 100, True, text.strip())
    if sign == "+":
        raise ValueError(f"constraint {text!r}: a signed value is a change and needs '%' ({_FORM})")
    return Constraint(name, op, value, False, text.strip())


_BUDGET = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def parse_budget(text: str) -> float:
    """``"20m"``, ``"90s"``, ``"1h30m"`` -> seconds (> 0); anything else a one-line ValueError."""
    m = _BUDGET.fullmatch((text or "").strip())
    if not m or not any(m.groups()):
        raise ValueError(f"budget {text!r}: expected a wall time such as 90s, 20m, 1h or 1h30m")
    h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    total = 3600 * h + 60 * mi + s
    if total <= 0:
        raise ValueError(f"budget {text!r} must be more than zero")
    return total


@dataclass
class Point:
    """One evaluated configuration: its spec and measured values (objective and constraint
    metrics), whether it met every constraint and by how much it missed otherwise."""

    spec: str
    values: dict[str, float | None]
    fidelity: str = "full"  # "full", "proxy" (screened out by the cheap proxy) or "error"
    violation: float = 0.0  # sum of positive constraint violations (0: feasible)
    reference: bool = False
    info: dict[str, Any] = field(default_factory=dict)  # trial, profile, wall_s, error

    @property
    def feasible(self) -> bool:
        return self.violation <= 0 and self.fidelity == "full"


def dominates(a: Point, b: Point, objectives: Sequence[Objective]) -> bool:
    """``a`` is no worse than ``b`` on every objective and better on one."""
    better = False
    for o in objectives:
        x, y = a.values.get(o.metric), b.values.get(o.metric)
        if x is None or y is None:
            return False
        if o.higher_is_better:
            x, y = -x, -y
        if x > y:
            return False
        better = better or x < y
    return better


def frontier(points: Iterable[Point], objectives: Sequence[Objective]) -> list[Point]:
    """The non-dominated feasible points with every objective measured, sorted by the first
    objective (best first), one per spec."""
    pts = list({p.spec: p for p in points if p.feasible
                and all(p.values.get(o.metric) is not None for o in objectives)}.values())
    front = [p for p in pts if not any(dominates(q, p, objectives) for q in pts)]
    o = objectives[0]
    return sorted(front, key=lambda p: ((-1 if o.higher_is_better else 1) * p.values[o.metric], p.spec))


def closest(points: Iterable[Point], n: int = 3) -> list[Point]:
    """The ``n`` measured points that missed the constraints by the least."""
    pts = [p for p in points if p.fidelity != "error" and not p.reference]
    return sorted(pts, key=lambda p: (p.violation, p.spec))[:n]


def write_frontier(run_dir: str | Path, rows: list[dict[str, Any]], **fields: Any) -> None:
    """``frontier.json``: the current frontier rows plus run-level fields (atomic)."""
    atomic_write(Path(run_dir) / FRONTIER_JSON,
                 json.dumps({**fields, "frontier": rows}, indent=1, sort_keys=True, default=str) + "\n")


def read_frontier(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``frontier.json`` ({} when the run is not a search or the file is unreadable)."""
    path = Path(run_dir) / FRONTIER_JSON
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def frontier_keys(run_dir: str | Path) -> set[tuple[str, str, str]]:
    """(model, spec, profile) of every frontier point of a search run: how the report marks them."""
    return {(str(r.get("model", "")), str(r.get("spec", "")), str(r.get("profile", "")))
            for r in read_frontier(run_dir).get("frontier", []) if isinstance(r, dict)}
