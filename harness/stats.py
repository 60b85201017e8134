"""The statistics behind verdicts: intervals of a change and the decision they support.

Every comparison is reduced to one interval of the *change in the worse direction*
(positive = worse; relative or absolute, as the metric's tolerance is), estimated from raw
samples:

- ``ratio_of_medians``: two independent sample sets (latency repeats of two runs; per-round
  speed-up ratios of two runs): a percentile bootstrap of median(a) / median(b).
- ``paired_ppl_change``: per-window NLL of the same windows in two runs: a bootstrap over
  windows of the perplexity ratio (pairing removes the between-window variance, so a
  +0.5% change on 64 windows is decided where an unpaired test sees noise).
- ``unpaired_ppl_change``: the same without pairing (window ids differ).
- ``paired_proportion_change``: per-token top-1 agreement bits of two runs: the paired
  difference of proportions (its Wald interval from the discordant counts) and McNemar's
  exact test on them.

``decide`` turns the interval and the tolerance into a verdict: regressed when the estimate
is beyond the tolerance and the interval excludes no change, pass when the whole interval
lies below the tolerance, inconclusive otherwise, with the sample size that would decide.
scipy does the resampling and the exact test; the seed is fixed, so a verdict is a
function of the samples.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
Z = statistics.NormalDist().inv_cdf(0.5 + CONFIDENCE / 2)  # two-sided normal quantile (1.96)
N_RESAMPLES = 2000
SEED = 0


@dataclass(frozen=True)
class Interval:
    """An estimate of a change (worse direction positive) with its confidence interval."""

    est: float
    lo: float
    hi: float
    n: int  # samples behind the narrower side (repeats, rounds, windows, tokens)
    method: str
    p_value: float | None = None
    fixed: float = 0.0  # part of the half-width that more samples of this run cannot narrow (``widen``)

    def describe(self, relative: bool) -> str:
        f = (lambda v: f"{100 * v:+.2f}%") if relative else (lambda v: f"{v:+.4g}")
        p = f", p={self.p_value:.3g}" if self.p_value is not None else ""
        conf = int(CONFIDENCE * 100)
        return f"{self.method}: change {f(self.est)} [{f(self.lo)}, {f(self.hi)}] ({conf}%, n={self.n}{p})"


def widen(c: Interval, extra: float, why: str) -> Interval:
    """``c`` with an independent error of half-width ``extra`` added in quadrature to each side
    (e.g. the run-to-run noise that one run's samples cannot show); the estimate is kept."""
    if extra <= 0:
        return c
    lo = c.est - math.hypot(c.est - c.lo, extra)
    hi = c.est + math.hypot(c.hi - c.est, extra)
    return dataclasses.replace(c, lo=lo, hi=hi, method=f"{c.method} + {why}", fixed=math.hypot(c.fixed, extra))


def _bootstrap(data: tuple[np.ndarray, ...], statistic, paired: bool) -> tuple[float, float]:
    from scipy.stats import bootstrap

    if all(np.ptp(d) == 0 for d in data):  # no variation: the interval is the point
        v = float(statistic(*[d[None, :] for d in data], axis=-1)[0])
        return v, v
    res = bootstrap(data, statistic, paired=paired, vectorized=True, n_resamples=N_RESAMPLES,
                    confidence_level=CONFIDENCE, method="percentile", rng=np.random.default_rng(SEED))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def ratio_of_medians(run: Sequence[float], base: Sequence[float], higher_is_better: bool) -> Interval:
    """Relative change of median(run) against median(base), worse direction positive."""
    a, b = np.asarray(run, float), np.asarray(base, float)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"a bootstrap needs >= 2 samples per side (have {len(a)} and {len(b)})")

    def stat(x, y, axis=-1):
        return np.median(x, axis=axis) / np.median(y, axis=axis)

    lo, hi = _bootstrap((a, b), stat, paired=False)
    est = float(np.median(a) / np.median(b))
    sign = -1.0 if higher_is_better else 1.0  # worse = lower ratio for higher-is-better
    w = sorted((sign * (lo - 1), sign * (hi - 1)))
    return Interval(sign * (est - 1), w[0], w[1], min(len(a), len(b)), "bootstrap ratio of medians")


def _tokens_per_window(nll: np.ndarray, value: float) -> float:
    """ppl = exp(sum nll / tokens) -> tokens per window (windows hold equal token counts)."""
    return float(nll.sum() / math.log(value) / len(nll)) if value > 1 else 1.0


def paired_ppl_change(run_nll: Sequence[float], base_nll: Sequence[float], run_value: float,
                      base_value: float) -> Interval:
    """Relative perplexity change (run vs base) over the same windows: windows resampled
    together, so each resample's change is exp(mean NLL difference per token) - 1."""
    r, b = np.asarray(run_nll, float), np.asarray(base_nll, float)
    if len(r) != len(b) or len(r) < 2:
        raise ValueError(f"paired test needs the same >= 2 windows (have {len(r)} and {len(b)})")
    t = _tokens_per_window(b, base_value)

    def stat(d, axis=-1):
        return np.expm1(np.mean(d, axis=axis) / t)

    d = r - b
    lo, hi = _bootstrap((d,), stat, paired=False)
    return Interval(run_value / base_value - 1, lo, hi, len(d), "paired bootstrap over windows")


def unpaired_ppl_change(run_nll: Sequence[float], base_nll: Sequence[float], run_value: float,
                        base_value: float) -> Interval:
    """Relative perplexity change when the windows cannot be paired (different window ids)."""
    r, b = np.asarray(run_nll, float), np.asarray(base_nll, float)
    if len(r) < 2 or len(b) < 2:
        raise ValueError(f"a bootstrap needs >= 2 windows per side (have {len(r)} and {len(b)})")
    tr, tb = _tokens_per_window(r, run_value), _tokens_per_window(b, base_value)

    def stat(x, y, axis=-1):
        return np.expm1(np.mean(x, axis=axis) / tr - np.mean(y, axis=axis) / tb)

    lo, hi = _bootstrap((r, b), stat, paired=False)
    return Interval(run_value / base_value - 1, lo, hi, min(len(r), len(b)), "unpaired bootstrap (window ids differ)")


def pack_bits(bits: Sequence[bool], width: int = 30) -> list[int]:
    """Booleans -> ints of ``width`` bits each (JSON-exact), first bit lowest."""
    out = []
    for i in range(0, len(bits), width):
        out.append(sum(1 << j for j, b in enumerate(bits[i: i + width]) if b))
    return out


def unpack_bits(words: Sequence[int], n: int, width: int = 30) -> np.ndarray:
    """Inverse of ``pack_bits`` for ``n`` booleans."""
    w = np.asarray(words, dtype=np.int64)[:, None]
    bits = ((w >> np.arange(width, dtype=np.int64)[None, :]) & 1).astype(bool).reshape(-1)
    return bits[:n]


def paired_proportion_change(run: np.ndarray, base: np.ndarray, higher_is_better: bool = True) -> Interval:
    """Change of a proportion measured on the same items in two runs (absolute, worse
    direction positive): Wald interval of the paired difference from the discordant
    counts, and McNemar's exact p-value (binomial test on the discordant pairs)."""
    from scipy.stats import binomtest, norm

    run, base = np.asarray(run, bool), np.asarray(base, bool)
    if run.shape != base.shape or run.size < 2:
        raise ValueError(f"paired proportions need the same >= 2 items (have {run.size} and {base.size})")
    n = run.size
    b = int((base & ~run).sum())   # the baseline right, this run wrong
    c = int((~base & run).sum())   # this run right, the baseline wrong
    diff = (c - b) / n             # run - base
    se = math.sqrt(max((b + c) - (c - b) ** 2 / n, 0.0)) / n
    z = float(norm.ppf(0.5 + CONFIDENCE / 2))
    p = float(binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0
    sign = -1.0 if higher_is_better else 1.0
    w = sorted((sign * (diff - z * se), sign * (diff + z * se)))
    return Interval(sign * diff, w[0], w[1], n, f"McNemar ({b} vs {c} discordant)", p)


def decide(change: Interval, allowed: float) -> tuple[str, str]:
    """(verdict, why) of a change interval against the allowed change (>= 0).

    The tolerance is the smallest change that matters; the interval says whether a change is
    real. ``regressed``: the estimate is beyond the tolerance and the interval excludes no
    change (asv's rule: beyond the factor *and* significant); ``improved``: the mirror image;
    ``pass``: the whole interval lies below +allowed (a regression beyond the tolerance is
    excluded); ``inconclusive``: neither, with the samples that would decide (the interval
    narrows as 1/sqrt(n)). Requiring the *whole* interval beyond the tolerance instead makes
    the effective threshold tolerance + 2 sd: on a noisy host a 13% speed-up loss against a
    10% tolerance was never flagged (docs/results/gating.md)."""
    if change.est > allowed and change.lo > 0:
        return "regressed", "" if change.lo > allowed else "beyond the tolerance by its estimate, and a real change"
    if change.est < -allowed and change.hi < 0:
        return "improved", "" if change.hi < -allowed else "beyond the tolerance by its estimate, and a real change"
    if change.hi <= allowed:
        return "pass", ""
    half = max(change.hi - change.est, change.est - change.lo)
    if change.est > allowed:  # beyond the tolerance, but no change is inside the interval
        what, margin = "the estimate is beyond the tolerance but the interval includes no change", change.est
    else:
        what, margin = "the interval straddles the tolerance", allowed - change.est
    if margin <= 1e-12 * max(1.0, abs(allowed)):
        need = "far more samples (the estimate sits on the tolerance)"
    elif margin <= change.fixed * (1 + 1e-9):
        return "inconclusive", (f"{what}; most of its width is run-to-run noise, which only repeated runs narrow "
                                f"(±{100 * change.fixed:.1f}% of ±{100 * half:.1f}%)")
    else:  # the within-run part narrows as 1/sqrt(n) until hypot(within, fixed) fits the margin
        within = math.sqrt(max(half ** 2 - change.fixed ** 2, 0.0))
        k = math.ceil(change.n * (within / math.sqrt(margin ** 2 - change.fixed ** 2)) ** 2)
        need = f"about {k} samples (have {change.n})" if k < 100 * max(change.n, 1) else \
            f"more than {100 * change.n} samples (have {change.n})"
    return "inconclusive", f"{what}; {need} would decide"
