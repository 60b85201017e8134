"""One metric of one run against its baseline: the statistical verdict and comparability.

Outcomes: ``improved``, ``pass``, ``regressed``, ``inconclusive`` (with the samples that
would decide) and ``not-comparable`` (the two fingerprints differ in a field that moves
the figure, named in the note). How each metric is judged:

- latency and speed-ups: a bootstrap interval of the ratio of medians of the two runs'
  samples (per-repeat timings; per-round interleaved speed-up ratios);
- ``ppl.window``: a paired bootstrap over the same windows' NLL (unpaired, and said so,
  when the window ids differ);
- ``fidelity.top1``: the paired difference of per-token agreement and McNemar's test;
- everything else (sizes, KL, memory, compress time): the value against the tolerance,
  exactly (sizes are deterministic), or, for a spread-only baseline (no samples, the
  schema before raw samples), the old rule: a change whose p10-p90 band overlaps the
  baseline's is noise; the note says "spread-only".

``harness.stats`` holds the statistics; tolerances come from the metric registry, the
suite's baseline file, or ``--harness-fail-on`` overrides, as before.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from harness import stats
from harness.baselines.file import MetricBaseline, Tolerance
from harness.records import Record

# Fingerprint fields that change performance figures; a difference in any of them makes
# latency / memory / energy figures not comparable (accuracy and sizes still are). Thread
# counts are compared as torch applies them (``torch_threads``), not as the environment
# spells them: OMP_NUM_THREADS unset on a 2-core host and OMP_NUM_THREADS=2 run the same.
# ``cpu_capability`` (torch's SIMD dispatch level) and ``cpu_id`` (family/model/stepping) are
# there because hosts of one class name differ: the int8 speed-ups of the quick suite moved
# 19-28% between an AVX512 and an AVX2 host both reporting "AMD EPYC" (docs/results/gating.md).
COMPARABLE_FIELDS = ("cpu", "cpu_id", "cpu_capability", "cpu_affinity", "torch_threads", "torch", "transformers",
                     "gpu", "gpu_torch_name", "driver", "cuda_runtime", "cuda_driver", "sm_clock_max_mhz",
                     "mem_clock_max_mhz", "power_limit_w", "cuda_device")
PERFORMANCE_PREFIXES = ("latency.", "memory.", "energy.", "compress.", "train.wall_s")


@dataclass
class Verdict:
    status: str
    metric: str
    model: str
    spec: str
    profile: str = "full"
    test_id: str = ""
    baseline: float | None = None
    measured: float | None = None
    tolerance: Tolerance | None = None
    note: str = ""

    def line(self) -> str:
        """One line naming metric, baseline, measured value and tolerance."""
        what = f"{self.model} {self.spec}"
        if self.baseline is None or self.measured is None:
            return f"{self.metric} {self.status} ({what}): {self.note}"
        pct = f" ({(self.measured / self.baseline - 1) * 100:+.1f}%)" if self.baseline else ""
        return (f"{self.metric} {self.status}: baseline {self.baseline:.6g}, measured {self.measured:.6g}"
                f"{pct}, tolerance {self.tolerance} ({what}){'; ' + self.note if self.note else ''}")


def fingerprint_diff(run: dict[str, Any] | None, base: dict[str, Any] | None) -> list[str]:
    """``field: base -> run`` for every comparability field the two fingerprints disagree on
    (a field absent from either side is not compared)."""
    if not run or not base:
        return []
    return [f"{k}: {base[k]} -> {run[k]}" for k in COMPARABLE_FIELDS
            if k in run and k in base and str(run[k]) != str(base[k])]


# Timings whose test also timed the uncompressed reference beside them (interleaved rounds,
# ``samples.reference_values`` on the raw metric): the speed-ups, and the raw latencies.
RAW_OF = {"latency.speedup_prefill": "latency.prefill_ms", "latency.speedup_decode": "latency.decode_ms_per_token",
          "latency.decode_tok_s": "latency.decode_ms_per_token"}
# Ratios against the reference timed in the same rounds (the primary latency verdict).
SPEEDUPS = ("latency.speedup_prefill", "latency.speedup_decode")


def reference_moved(run_raw: Record | None, base_raw: MetricBaseline | None, allowed: float,
                    shown: bool = False) -> str | None:
    """How far the reference timed beside a test moved against the reference timed beside
    the same test in the baseline (``+31% [+28%, +35%]``), when that is not shown within
    ``±allowed`` (``shown``: only when the move is shown beyond it, the whole interval
    outside); None otherwise, or when either side lacks the samples."""
    r = (run_raw.samples or {}).get("reference_values") if run_raw else None
    b = (base_raw.samples or {}).get("reference_values") if base_raw else None
    if not r or not b or len(r) < 2 or len(b) < 2:
        return None
    c = stats.ratio_of_medians(r, b, higher_is_better=False)  # + : the reference is slower now
    inside = -allowed <= c.lo and c.hi <= allowed
    beyond = c.lo > allowed or c.hi < -allowed
    if inside or (shown and not beyond):
        return None
    return f"{100 * c.est:+.0f}% [{100 * c.lo:+.0f}%, {100 * c.hi:+.0f}%]"


def hold_if_host_moved(v: Verdict, run_raw: Record | None, base_raw: MetricBaseline | None) -> None:
    """Hold a timing verdict ``inconclusive`` when the host moved, judged by the reference
    timed beside the test against the reference timed beside it in the baseline.

    A raw latency is judged only while that reference is *shown* consistent with the
    baseline's (its interval inside the metric's tolerance): raw time is the host's as much
    as the model's. A speed-up is the primary verdict and already cancels the host's speed
    within a round; it is held only when the reference is *shown* to have moved beyond the
    tolerance (the whole interval outside), because kernels scale differently when the host
    runs much faster or slower (measured: speed-ups moved 15-23% while their interleaved
    reference moved 22-33%). Holding it whenever the move merely cannot be excluded hid a
    planted 15% slow-down in two of three runs (docs/results/gating.md)."""
    if v.status not in ("regressed", "improved") or v.spec == "none" or v.tolerance is None or not v.baseline:
        return
    allowed = v.tolerance.allowed(v.baseline) / abs(v.baseline)
    speedup = v.metric in SPEEDUPS  # decode_tok_s is a raw rate: the raw rule
    moved = reference_moved(run_raw, base_raw, allowed, shown=speedup)
    if moved:
        how = "beyond" if speedup else "not shown within"
        v.note = "; ".join(x for x in (v.note, (
            f"host moved: the reference timed beside this test is {moved} against the baseline's, {how} "
            f"±{allowed:.0%}, so this timing is not judged; alone it would have been {v.status}")) if x)
        v.status = "inconclusive"


def is_performance(metric: str) -> bool:
    return metric.startswith(PERFORMANCE_PREFIXES)


def change_interval(rec: Record, base: MetricBaseline) -> tuple[stats.Interval | None, bool]:
    """(the change interval from both sides' raw samples, whether it is relative), or
    (None, _) when the samples do not support a test."""
    rs, bs = rec.samples or {}, base.samples or {}
    hib = bool(base.higher_is_better)
    if rec.metric == "ppl.window" and rs.get("window_nll") and bs.get("window_nll"):
        paired = rs.get("window_ids") == bs.get("window_ids")
        fn = stats.paired_ppl_change if paired else stats.unpaired_ppl_change
        return fn(rs["window_nll"], bs["window_nll"], float(rec.value), base.value), True
    if rec.metric == "fidelity.top1" and rs.get("agree_bits") and bs.get("agree_bits"):
        n_r, n_b = int(rs.get("tokens", [0])[0]), int(bs.get("tokens", [0])[0])
        if n_r == n_b and n_r >= 2:
            return stats.paired_proportion_change(stats.unpack_bits(rs["agree_bits"], n_r),
                                                  stats.unpack_bits(bs["agree_bits"], n_b), hib), False
    if len(rs.get("values", [])) >= 2 and len(bs.get("values", [])) >= 2:
        return stats.ratio_of_medians(rs["values"], bs["values"], hib), True
    return None, True


# Prior weight (degrees of freedom) of the file-wide run-to-run noise of a metric when an
# entry's own few runs estimate its noise: with 3 runs (2 df) the two weigh the same.
NOISE_PRIOR_DF = 2.0


def _log_var(values: list[float]) -> tuple[float, int] | None:
    """(variance of log values, degrees of freedom), or None when they cannot be logged."""
    if len(values) < 2 or any(v <= 0 for v in values):
        return None
    lv = [math.log(v) for v in values]
    m = sum(lv) / len(lv)
    return sum((x - m) ** 2 for x in lv) / (len(lv) - 1), len(lv) - 1


def pooled_log_var(bf: Any, metric: str) -> tuple[float, float]:
    """(pooled variance of log values, its degrees of freedom) of ``metric`` over the entries
    of baseline file ``bf`` that keep several runs. Entries whose runs agree exactly (the
    reference's speed-up is 1 by construction) stay out: they are constants, not quiet
    measurements."""
    pooled = [lv for e in bf.entries.values() if metric in e.metrics
              for lv in [_log_var(e.metrics[metric].runs)] if lv and lv[0] > 0]
    df0 = sum(d for _, d in pooled)
    return (sum(v * d for v, d in pooled) / df0 if df0 else 0.0), df0


def run_noise(bf: Any, metric: str, base: MetricBaseline, runs: list[float] | None = None,
              pooled: tuple[float, float] | None = None) -> tuple[float, int, int] | None:
    """(run-to-run standard deviation of ``metric`` for this entry, relative; runs behind the
    baseline; runs behind the measured value), from the per-run values a multi-run baseline
    keeps and those of a repeated run (``runs``); None without either. ``pooled``: the file's
    ``pooled_log_var`` for the metric, when the caller judges many records of one file.

    One run's samples show the noise within a run, not between runs: on a shared 2-core
    host the int8/int4 kernels' speed-ups moved up to 17% from one process to the next while
    each run's interval was a few percent wide (docs/results/gating.md). An entry's own 3-5 runs
    estimate that badly, so its log variance is shrunk towards the file's pooled variance for
    the metric (a moderated variance, as in limma): ``(d0 s0² + d s²) / (d0 + d)``; the
    repeated run's own runs add their degrees of freedom."""
    own = [lv for lv in (_log_var(base.runs), _log_var(list(runs or []))) if lv]
    if not own:
        return None
    s0, df0 = pooled if pooled is not None else pooled_log_var(bf, metric)
    d_own = sum(d for _, d in own)
    s_own = sum(v * d for v, d in own) / d_own
    var = (NOISE_PRIOR_DF * (s0 if df0 else s_own) + d_own * s_own) / (NOISE_PRIOR_DF + d_own)
    return math.sqrt(var), max(len(base.runs), 1), max(len(runs or []), 1)


def compare(rec: Record, base: MetricBaseline, tolerance: Tolerance | None = None,
            noise: tuple[float, int, int] | None = None) -> Verdict:
    """Verdict of one measured record against its baseline value. ``noise``: the run-to-run
    (sd, baseline runs, measured runs) of ``run_noise``, added to relative intervals: the
    measured value is a median of its runs (variance about sd²/runs; one run: sd²) and the
    baseline a median of its own. A record whose technique makes it depend on the eval
    batching (``extra.batch_invariant`` false) is judged all the same, and the note says so."""
    v = _compare(rec, base, tolerance, noise)
    if rec.extra.get("batch_invariant") is False and v.status != "missing":
        v.note = "; ".join(x for x in (v.note, (
            f"depends on the eval batching (measured at batch {rec.extra.get('eval_batch', '?')}): "
            f"{rec.extra.get('batch_dependence') or 'not batch-invariant'}")) if x)
    return v


def _compare(rec: Record, base: MetricBaseline, tolerance: Tolerance | None,
             noise: tuple[float, int, int] | None) -> Verdict:
    tol = tolerance or base.tolerance
    v = Verdict("pass", rec.metric, rec.model, rec.spec, str(rec.extra.get("profile", "full")), rec.test_id,
                base.value, rec.value, tol)
    if rec.value is None:
        v.status, v.note = "missing", f"not measured: {rec.reason or rec.status}"
        return v
    try:
        change, relative = change_interval(rec, base)
    except ValueError as e:  # too few samples on one side: judged as spread-only below
        change, relative, why = None, True, str(e)
    else:
        why = ""
    if change is not None and relative and noise and noise[0] > 0:
        sd, k, k_run = noise
        between = stats.Z * sd * math.sqrt(1 / k_run + 1 / k)
        runs = f"{k} baseline runs" + (f", median of {k_run} runs" if k_run > 1 else "")
        change = stats.widen(change, between, f"run-to-run noise ±{100 * stats.Z * sd:.1f}% ({runs})")
    if change is not None:
        if relative:
            allowed = tol.allowed(base.value) / abs(base.value) if base.value else float("inf")
        else:
            allowed = tol.allowed(base.value)
        v.status, decided = stats.decide(change, allowed)
        v.note = "; ".join(x for x in (change.describe(relative), decided) if x)
        return v
    worse = (base.value - rec.value) if base.higher_is_better else (rec.value - base.value)
    has_samples = bool(base.samples)
    label = "" if has_samples or not (rec.samples or base.spread) else \
        f"spread-only baseline{' (' + why + ')' if why else ''}: `harness baseline update` stores samples"
    if abs(worse) <= tol.allowed(base.value):
        v.note = label
        return v
    lo_b, hi_b = base.spread.get("p10", base.value), base.spread.get("p90", base.value)
    lo_m, hi_m = (rec.spread or {}).get("p10", rec.value), (rec.spread or {}).get("p90", rec.value)
    if (base.spread or rec.spread) and lo_m <= hi_b and lo_b <= hi_m:
        v.note = "; ".join(x for x in (f"within noise: measured p10-p90 [{lo_m:.4g}, {hi_m:.4g}] overlaps "
                                       f"baseline [{lo_b:.4g}, {hi_b:.4g}]", label) if x)
        return v
    v.status = "regressed" if worse > 0 else "improved"
    v.note = label
    return v
