"""Change points in nightly history: where a (model, technique, metric) series stepped.

Method (documented in docs/results/gating.md, false-alarm rate measured there):

1. The noise scale of a series is estimated robustly from its first differences,
   ``sigma = 1.4826 * MAD(diff) / sqrt(2)``: a step moves one difference only, so the scale
   is the run-to-run noise, not the step.
2. PELT (``ruptures``, cost ``l2``) segments the series divided by ``sigma`` with the
   penalty ``PENALTY * log(n)`` per change point (a BIC-style penalty: a step must explain
   more variance than it costs) and segments of at least ``MIN_SIZE`` runs.
3. A change point is reported only when the medians of the segments on either side differ
   by more than the metric's tolerance: a statistically clear step that no gate would care
   about is not a step.

Deterministic series (sizes, perplexity on fixed windows) have ``sigma`` = 0: there every
change beyond the tolerance is a step.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.baselines.judge import fingerprint_diff

PENALTY = 4.0
MIN_SIZE = 2


def noise_scale(values: np.ndarray) -> float:
    """Run-to-run noise of a series, robust to steps (MAD of first differences)."""
    if len(values) < 3:
        return 0.0
    d = np.diff(values)
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / math.sqrt(2))


def change_points(values: list[float], allowed_rel: float, *, penalty: float = PENALTY,
                  min_size: int = MIN_SIZE) -> list[int]:
    """Indices i where a new level starts (value i is the first after the step)."""
    x = np.asarray(values, float)
    n = len(x)
    if n < 2 * min_size:
        return []
    level = float(np.median(np.abs(x))) or 1.0
    sigma = noise_scale(x)
    if sigma <= 1e-9 * level:  # deterministic: every change beyond tolerance is a step
        return [i for i in range(1, n) if abs(x[i] - x[i - 1]) > allowed_rel * abs(x[i - 1])]
    import ruptures

    bkps = ruptures.Pelt(model="l2", min_size=min_size, jump=1).fit(x / sigma).predict(pen=penalty * math.log(n))
    out, start = [], 0
    cuts = [b for b in bkps if b < n]
    for i, b in enumerate(cuts):
        end = cuts[i + 1] if i + 1 < len(cuts) else n
        before, after = float(np.median(x[start:b])), float(np.median(x[b:end]))
        if abs(after - before) > allowed_rel * abs(before):
            out.append(b)
            start = b
    return out


@dataclass
class Step:
    """One detected step of one series, with what explains it."""

    key: tuple[str, str, str, str]  # model, spec, profile, device class
    metric: str
    run_id: str                     # first run after the step
    previous_run: str
    before: float
    after: float
    fingerprint_changes: list[str] = field(default_factory=list)
    commits: str = ""

    @property
    def change_pct(self) -> float:
        return 100 * (self.after / self.before - 1) if self.before else float("nan")

    def line(self) -> str:
        model, spec, profile, dc = self.key
        why = "; ".join(filter(None, [", ".join(self.fingerprint_changes) and
                                      "fingerprint: " + ", ".join(self.fingerprint_changes),
                                      self.commits and f"commits {self.commits}"])) or "no fingerprint change"
        return (f"{model} {spec} [{profile}, {dc}] {self.metric}: {self.before:.5g} -> {self.after:.5g} "
                f"({self.change_pct:+.1f}%) first in run {self.run_id} (after {self.previous_run}); {why}")


def explain(prev: dict[str, Any], cur: dict[str, Any]) -> tuple[list[str], str]:
    """(fingerprint fields that changed, the commit range) between two runs' info."""
    fp = fingerprint_diff(json.loads(cur.get("fingerprint") or "{}"), json.loads(prev.get("fingerprint") or "{}"))
    a, b = prev.get("commit") or "", cur.get("commit") or ""
    return fp, (f"{a[:12]}..{b[:12]}" if a and b and a != b else "")
