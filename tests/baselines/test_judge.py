"""Statistical verdicts against baselines that keep raw samples (issue 17): paired accuracy
tests, McNemar, latency intervals, host drift, fingerprint comparability, spread-only files."""
from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest

from harness import stats
from harness.baselines.file import SCHEMA, BaselineError, load_baseline, parse_tolerance
from harness.baselines.judge import run_noise
from harness.baselines.store import BaselineStore, combine_runs, update
from harness.baselines.verdicts import judge_run
from harness.records import Record

DC = "cpu-test-2c"


def verdicts(records, store, dc=None, *, missing=True, overrides=None, reference_records=(), fingerprint=None):
    """``judge_run`` as the tests call it: ``missing=False`` leaves out metrics a test did not measure."""
    vs = judge_run(records, store, fingerprint=fingerprint, reference=reference_records, tolerances=overrides)
    return vs if missing else [v for v in vs if v.status != "missing"]
FP = {"cpu": "Test CPU", "cpu_affinity": 2, "torch": "2.13.0", "transformers": "5.0", "torch_threads": 1}


def rec(metric, value, samples=None, spec="rtn:bits=4", **kw):
    return Record(metric, value, samples=samples or {}, model="m", spec=spec, technique=spec.split(":")[0],
                  suite="default", device_class=DC, test_id=f"t[{spec}]", extra={"profile": "full"}, **kw)


def ppl_rec(scale: float, ids=None, spec="rtn:bits=4"):
    """ppl.window over 64 windows of 127 predicted tokens, every window scaled by ``scale``."""
    g = np.random.default_rng(0)
    nll = 127 * (3.0 + 0.5 * g.standard_normal(64)) + 127 * math.log(scale)
    value = math.exp(nll.sum() / (64 * 127))
    return rec("ppl.window", value, {"window_nll": list(nll), "window_ids": ids or list(range(64))}, spec=spec)


def lat_rec(metric, median, n=20, spread=0.03, seed=0, spec="rtn:bits=4"):
    v = list(median * (1 + spread * np.random.default_rng(seed).standard_normal(n)))
    return rec(metric, float(np.median(v)), {"values": v}, spec=spec)


def judge(records, base_records, tmp_path, fingerprint=None, base_fp=None, refs=()):
    update(base_records, tmp_path, fingerprint=base_fp)
    return verdicts(records, BaselineStore(tmp_path), DC, missing=False, fingerprint=fingerprint,
                       reference_records=refs)


def test_planted_two_percent_perplexity_is_regressed_and_a_tenth_of_it_passes(tmp_path):
    [v] = judge([ppl_rec(1.02)], [ppl_rec(1.0)], tmp_path)
    assert v.status == "regressed" and "paired bootstrap over windows" in v.note
    [v] = judge([ppl_rec(1.002)], [ppl_rec(1.0)], tmp_path)
    assert v.status == "pass"
    [v] = judge([ppl_rec(0.97)], [ppl_rec(1.0)], tmp_path)
    assert v.status == "improved"


def test_mismatched_window_ids_fall_back_to_unpaired_and_say_so(tmp_path):
    [v] = judge([ppl_rec(1.02, ids=list(range(1, 65)))], [ppl_rec(1.0)], tmp_path)
    assert "unpaired bootstrap (window ids differ)" in v.note
    assert v.status in ("inconclusive", "pass")  # the between-window variance hides 2%


def test_top1_is_judged_by_mcnemar_on_the_same_tokens(tmp_path):
    n = 4096
    base = np.ones(n, bool)
    base[::10] = False
    run = base.copy()
    run[1:200:2] = False                                  # 100 more tokens disagree: -2.4 points
    mk = lambda bits: rec("fidelity.top1", float(bits.mean()),  # noqa: E731
                          {"agree_bits": stats.pack_bits(list(bits)), "tokens": [n]}, higher_is_better=True)
    [v] = judge([mk(run)], [mk(base)], tmp_path)
    assert v.status == "regressed" and "McNemar (100 vs 0 discordant)" in v.note and "p=" in v.note
    [v] = judge([mk(base)], [mk(base)], tmp_path)
    assert v.status == "pass"


def test_speedup_interval_flags_a_fifteen_percent_slowdown_not_noise(tmp_path):
    base = lat_rec("latency.speedup_decode", 2.0, seed=1)
    base.higher_is_better = True
    slow = lat_rec("latency.speedup_decode", 2.0 / 1.15, seed=2)
    same = lat_rec("latency.speedup_decode", 2.0, seed=3)
    for r in (slow, same):
        r.higher_is_better = True
    [v] = judge([slow], [base], tmp_path)
    assert v.status == "regressed" and "bootstrap ratio of medians" in v.note
    [v] = judge([same], [base], tmp_path)
    assert v.status == "pass"


def test_noisy_latency_is_inconclusive_with_the_repeats_needed(tmp_path):
    base = lat_rec("latency.speedup_decode", 2.0, n=4, spread=0.25, seed=1)
    run = lat_rec("latency.speedup_decode", 1.75, n=4, spread=0.25, seed=2)
    base.higher_is_better = run.higher_is_better = True
    [v] = judge([run], [base], tmp_path)
    assert v.status == "inconclusive" and "samples (have 4) would decide" in v.note


def test_raw_latency_is_gated_only_when_the_reference_is_consistent(tmp_path):
    base = [lat_rec("latency.prefill_ms", 10.0, seed=1, spec="none"), lat_rec("latency.prefill_ms", 5.0, seed=2)]
    # Same host: the reference is consistent, a technique 40% slower is regressed.
    run = [lat_rec("latency.prefill_ms", 10.0, seed=3, spec="none"), lat_rec("latency.prefill_ms", 7.0, seed=4)]
    vs = {v.spec: v for v in judge(run, base, tmp_path)}
    assert vs["none"].status == "pass" and vs["rtn:bits=4"].status == "regressed"
    # The host slowed everything by 40%: nothing is flagged, and the note says by how much.
    run = [lat_rec("latency.prefill_ms", 14.0, seed=3, spec="none"), lat_rec("latency.prefill_ms", 7.0, seed=4)]
    vs = {v.spec: v for v in judge(run, base, tmp_path)}
    assert {v.status for v in vs.values()} == {"inconclusive"}
    assert re.search(r"host moved: .* is \+(3[5-9]|4[0-5])% against its baseline", vs["rtn:bits=4"].note)
    assert "would have been regressed" in vs["rtn:bits=4"].note


def test_a_fingerprint_mismatch_is_not_comparable_for_performance_only(tmp_path):
    other = {**FP, "torch": "2.14.0", "torch_threads": 2}
    vs = {v.metric: v for v in judge([lat_rec("latency.prefill_ms", 10.0), ppl_rec(1.0)],
                                     [lat_rec("latency.prefill_ms", 10.0), ppl_rec(1.0)], tmp_path,
                                     fingerprint=other, base_fp=FP)}
    lat = vs["latency.prefill_ms"]
    assert lat.status == "not-comparable"
    assert "torch: 2.13.0 -> 2.14.0" in lat.note and "torch_threads: 1 -> 2" in lat.note
    assert vs["ppl.window"].status == "pass"  # accuracy does not depend on the host
    [v] = judge([lat_rec("latency.prefill_ms", 10.0)], [lat_rec("latency.prefill_ms", 10.0)], tmp_path,
                fingerprint=dict(FP), base_fp=FP)
    assert v.status == "pass"
    # OMP_NUM_THREADS spelled out, same effective torch thread count: still comparable.
    [v] = judge([lat_rec("latency.prefill_ms", 10.0)], [lat_rec("latency.prefill_ms", 10.0)], tmp_path,
                fingerprint={**FP, "omp_num_threads": "1"}, base_fp={**FP, "omp_num_threads": None})
    assert v.status == "pass"


def test_hosts_of_one_class_name_with_another_simd_level_are_not_comparable(tmp_path):
    """Two VMs both named "AMD EPYC" (one device class) but AVX512 against AVX2: int8 kernels
    differ several-fold, so timings are not comparable; a baseline written before the field
    existed is still compared (an absent field is not a difference)."""
    from harness.measure.environment import fingerprint

    fp = fingerprint()
    assert fp["cpu_capability"] and fp["cpu_capability"].startswith(("AVX", "DEFAULT", "VSX", "ZVECTOR", "SVE", "NEON"))
    run = {**FP, "cpu_capability": "AVX2", "cpu_id": "AuthenticAMD family 25 model 1 stepping 1"}
    base = {**FP, "cpu_capability": "AVX512", "cpu_id": "AuthenticAMD family 25 model 17 stepping 1"}
    recs = lambda: [lat_rec("latency.prefill_ms", 10.0), ppl_rec(1.0)]
    vs = {v.metric: v for v in judge(recs(), recs(), tmp_path, fingerprint=run, base_fp=base)}
    assert vs["latency.prefill_ms"].status == "not-comparable"
    note = vs["latency.prefill_ms"].note
    assert "cpu_capability: AVX512 -> AVX2" in note and "model 17 " in note
    assert vs["ppl.window"].status == "pass"
    old = {k: v for k, v in FP.items() if k not in ("cpu_capability", "cpu_id")}
    [v] = judge([lat_rec("latency.prefill_ms", 10.0)], [lat_rec("latency.prefill_ms", 10.0)], tmp_path,
                fingerprint=run, base_fp=old)
    assert v.status == "pass"


def test_update_stores_samples_and_fingerprint_and_a_spread_only_file_still_works(tmp_path):
    [(path, _, _)] = update([ppl_rec(1.0), lat_rec("latency.prefill_ms", 10.0)], tmp_path, fingerprint=FP)
    bf = load_baseline(path)
    assert bf.source["fingerprint"] == FP
    ent = next(iter(bf.entries.values()))
    assert len(ent.metrics["ppl.window"].samples["window_nll"]) == 64
    assert len(ent.metrics["latency.prefill_ms"].samples["values"]) == 20
    # A baseline written before samples existed: judged by the old band rule, labelled.
    old = dataclasses.replace(lat_rec("latency.prefill_ms", 10.0), samples={}, spread={"p10": 9.5, "p90": 10.5})
    update([old], tmp_path / "old")
    [v] = verdicts([lat_rec("latency.prefill_ms", 10.2)], BaselineStore(tmp_path / "old"), DC,
                      missing=False)
    assert v.status == "pass" and "spread-only baseline" in v.note and "harness baseline update" in v.note


def test_bad_samples_in_a_baseline_file_are_a_one_line_error(tmp_path):
    import json

    import pytest

    p = tmp_path / "default" / f"{DC}.json"
    p.parent.mkdir(parents=True)
    p.write_text(json.dumps({"schema": SCHEMA, "suite": "default", "device_class": DC, "entries": [
        {"model": "m", "spec": "none", "metrics": {"ppl.window": {
            "value": 5.0, "direction": "lower", "tolerance": "1%", "samples": {"window_nll": ["x"]}}}}]}))
    with pytest.raises(BaselineError, match=r"samples: expected an object of number lists"):
        load_baseline(p)


def test_a_relative_plus_absolute_tolerance_judges_near_zero_memory(tmp_path):
    assert str(parse_tolerance("25%+8")) == "25%+8"
    assert parse_tolerance("25%+8").allowed(100.0) == 33.0
    [v] = judge([rec("memory.step_peak_mb", 0.0078)], [rec("memory.step_peak_mb", 0.0)], tmp_path)
    assert v.status == "pass"  # the registry's 25%+8 MiB: a page of RSS is not a regression
    [v] = judge([rec("memory.step_peak_mb", 20.0)], [rec("memory.step_peak_mb", 0.0)], tmp_path)
    assert v.status == "regressed"


def test_compression_wall_time_is_not_judged_while_the_host_moved(tmp_path):
    base = [lat_rec("latency.prefill_ms", 10.0, seed=1, spec="none"), rec("compress.wall_s", 1.0)]
    run = [lat_rec("latency.prefill_ms", 30.0, seed=3, spec="none"), rec("compress.wall_s", 4.0)]
    vs = {v.metric: v for v in judge(run, base, tmp_path)}
    assert vs["compress.wall_s"].status == "inconclusive"
    assert "reference's own latency.prefill_ms" in vs["compress.wall_s"].note
    [v] = judge([rec("compress.wall_s", 4.0)], [rec("compress.wall_s", 1.0)], tmp_path / "quiet")
    assert v.status == "regressed"  # same host: a 4x slower compression is a regression


def test_a_speedup_is_held_when_the_reference_timed_beside_it_moved(tmp_path):
    """Speed-ups cancel small host changes, not large ones: a 15% lower speed-up is regressed
    while the interleaved reference matches the baseline's, inconclusive when that reference
    ran 30% faster (the host moved), and the note says by how much."""
    def pair(ref_ms, speedup, seed):
        raw = lat_rec("latency.prefill_ms", ref_ms / speedup, seed=seed)
        raw.samples["reference_values"] = lat_rec("latency.prefill_ms", ref_ms, seed=seed + 1).samples["values"]
        sp = lat_rec("latency.speedup_prefill", speedup, seed=seed + 2)
        sp.higher_is_better = True
        return [raw, sp]

    base = pair(10.0, 1.0, 1)
    vs = {v.metric: v for v in judge(pair(10.0, 0.85, 10), base, tmp_path)}
    assert vs["latency.speedup_prefill"].status == "regressed"
    vs = {v.metric: v for v in judge(pair(7.0, 0.85, 10), base, tmp_path)}
    sp = vs["latency.speedup_prefill"]
    assert sp.status == "inconclusive"
    assert re.search(r"reference timed beside this test is -3\d% .* beyond ±10%.*would have been regressed", sp.note)
    # a raw latency 40% slower is held by the same check (its own tolerance, 25%)
    vs = {v.metric: v for v in judge(pair(7.0, 0.5, 10), base, tmp_path)}
    raw = vs["latency.prefill_ms"]
    assert raw.status == "inconclusive" and "would have been regressed" in raw.note



def test_a_speedup_is_held_only_when_the_host_is_shown_to_have_moved_a_raw_latency_unless_shown_still(tmp_path):
    """The reference beside the test ran 11% faster, but its interval reaches inside the 10%
    tolerance: the speed-up (the primary verdict) stays regressed. A raw latency is held
    unless the reference is shown within the raw metric's own tolerance."""
    def pair(ref_ms, speedup, seed, spread):
        raw = lat_rec("latency.prefill_ms", ref_ms / speedup, seed=seed, spread=spread)
        raw.samples["reference_values"] = lat_rec("latency.prefill_ms", ref_ms, seed=seed + 1,
                                                  spread=spread).samples["values"]
        sp = lat_rec("latency.speedup_prefill", speedup, seed=seed + 2)
        sp.higher_is_better = True
        return [raw, sp]

    base = pair(10.0, 1.0, 1, 0.03)
    vs = {v.metric: v for v in judge(pair(8.9, 0.8, 10, 0.10), base, tmp_path)}
    assert vs["latency.speedup_prefill"].status == "regressed", vs["latency.speedup_prefill"].note
    raw = vs["latency.prefill_ms"]  # 8.9 / 0.8 = 11.1 ms against 10: 11% slower, tolerance 25%: not regressed
    assert raw.status in ("pass", "inconclusive")
    # the reference 25% faster, its interval straddling the raw latency's own 25% tolerance:
    # a raw latency 50% slower is held (the host is not shown to be the baseline's)
    vs = {v.metric: v for v in judge(pair(7.5, 0.5, 10, 0.15), base, tmp_path)}
    raw = vs["latency.prefill_ms"]
    assert raw.status == "inconclusive" and "not shown within ±25%" in raw.note, raw.note

    def decode(ref_ms, slower, seed, spread):
        """decode_tok_s is a raw rate (1000 / ms per token), not a ratio to the reference."""
        ms = lat_rec("latency.decode_ms_per_token", ref_ms * slower, seed=seed, spread=spread)
        ms.samples["reference_values"] = lat_rec("latency.decode_ms_per_token", ref_ms, seed=seed + 1,
                                                 spread=spread).samples["values"]
        tok = rec("latency.decode_tok_s", 1000 / ms.value, {"values": [1000 / x for x in ms.samples["values"]]})
        tok.higher_is_better = True
        return [ms, tok]

    vs = {v.metric: v for v in judge(decode(7.5, 3.0, 10, 0.15), decode(10.0, 1.0, 1, 0.03), tmp_path / "dec")}
    for m in ("latency.decode_ms_per_token", "latency.decode_tok_s"):
        assert vs[m].status == "inconclusive" and "not shown within ±25%" in vs[m].note, (m, vs[m].note)


def _speedup(value, run_id, spec, seed, spread=0.01):
    r = lat_rec("latency.speedup_prefill", value, seed=seed, spread=spread, spec=spec)
    r.higher_is_better, r.run_id = True, run_id
    return r


def test_a_multi_run_baseline_allows_for_run_to_run_noise_an_entry_at_a_time(tmp_path):
    """Each run's samples are tight (1%), but the noisy entry's speed-up moved 15% between
    runs: one run 12% lower is regressed against a one-run baseline, inconclusive against a
    3-run one (noise that one run cannot show). The stable entry's runs agree to 1%, so the
    same 12% drop is still regressed: the noise is judged per entry (shrunk towards the
    file's pooled noise), not one width for all."""
    noisy, stable = "nf4", "magnitude:sparsity=0.5"
    runs = [("r1", 0.85, 1.000), ("r2", 0.72, 1.010), ("r3", 0.80, 0.995)]
    base = [_speedup(v, rid, noisy, i) for i, (rid, v, _) in enumerate(runs)]
    base += [_speedup(v, rid, stable, 10 + i) for i, (rid, _, v) in enumerate(runs)]
    # most entries of a real file are stable (dense kernels): they make the pooled noise small
    base += [_speedup(v * (1 + 0.002 * j), rid, f"magnitude:sparsity=0.{j}", 30 + 3 * j + i)
             for j in range(1, 13) for i, (rid, _, v) in enumerate(runs)]
    run = [_speedup(0.80 * 0.88, "now", noisy, 20), _speedup(1.0 * 0.88, "now", stable, 21)]
    vs = {v.spec: v for v in judge(run, [base[0], base[3]], tmp_path / "one")}  # run r1 alone
    assert vs[noisy].status == "regressed" and vs[stable].status == "regressed"
    vs = {v.spec: v for v in judge(run, base, tmp_path / "three")}
    assert vs[noisy].status == "inconclusive", vs[noisy].note
    assert "run-to-run noise" in vs[noisy].note and "only repeated runs narrow" in vs[noisy].note
    assert vs[stable].status == "regressed", vs[stable].note
    bf = load_baseline(tmp_path / "three" / "default" / f"{DC}.json")
    ent = next(e for e in bf.entries.values() if e.spec == noisy)
    mb = ent.metrics["latency.speedup_prefill"]
    assert np.allclose(mb.runs, [0.85, 0.72, 0.80], rtol=0.02)
    assert mb.value == sorted(mb.runs)[1]  # the median run's value (and its samples)
    sd, k, k_run = run_noise(bf, "latency.speedup_prefill", mb)
    own = float(np.std(np.log(mb.runs), ddof=1))
    assert k == 3 and k_run == 1 and 0.005 < sd < own  # shrunk towards the pooled (mostly stable) noise


def test_widen_adds_in_quadrature_and_keeps_the_estimate():
    c = stats.Interval(0.10, 0.07, 0.14, 20, "m")
    w = stats.widen(c, 0.04, "noise")
    assert w.est == 0.10 and math.isclose(w.lo, 0.10 - 0.05) and math.isclose(w.hi, 0.10 + math.hypot(0.04, 0.04))
    assert w.method == "m + noise" and stats.widen(c, 0.0, "x") is c


def test_runs_round_trip_and_a_single_run_value_is_refused(tmp_path):
    [(path, _, _)] = update([_speedup(1.0, "a", "rtn:bits=4", 1), _speedup(1.1, "b", "rtn:bits=4", 2)], tmp_path)
    raw = path.read_text()
    assert '"runs": [' in raw
    assert load_baseline(path).entries
    path.write_text(raw.replace('"runs": [', '"runs": [1.0], "x": [', 1))
    try:
        load_baseline(path)
    except BaselineError as e:
        assert ".runs: expected a list of at least 2 per-run values" in str(e)
    else:
        raise AssertionError("a one-value runs list was accepted")


def test_a_repeated_run_divides_the_run_to_run_noise_by_its_runs(tmp_path):
    """A baseline of 3 runs of a noisy entry (its speed-up moved 0.72-0.85 between runs).
    One run of a 15% slower forward (speed-up 13% lower) is inside that noise; the median of
    five such runs is not: the run-to-run term shrinks from sqrt(1 + 1/3) to sqrt(1/5 + 1/3)."""
    noisy = "nf4"
    base = [_speedup(v, rid, noisy, i) for i, (rid, v) in enumerate([("r1", 0.85), ("r2", 0.72), ("r3", 0.80)])]
    slow = 0.80 / 1.15
    one = [_speedup(slow, "now", noisy, 20)]
    [v] = judge(one, base, tmp_path / "one")
    assert v.status == "inconclusive", v.note
    five = [_speedup(slow * f, f"now{i}", noisy, 30 + i) for i, f in enumerate((1.06, 0.95, 1.0, 1.03, 0.97))]
    [v] = judge(five, base, tmp_path / "five")
    assert v.status == "regressed" and "median of 5 runs" in v.note, v.note
    assert v.measured == pytest.approx(slow, rel=0.02)  # the median run's value


def test_combine_runs_keeps_the_median_run_whole_and_every_runs_value():
    rs = [_speedup(v, f"r{i}", "nf4", i) for i, v in enumerate((0.9, 0.7, 0.8))]
    other = _speedup(0.5, "r0", "awq", 9)
    out = combine_runs([*rs, other])
    assert len(out) == 2 and out[1] is other  # a metric measured by one run only passes unchanged
    m = out[0]
    assert m.run_id == "r2" and m.samples == rs[2].samples and sorted(m.extra["runs"]) == pytest.approx(
        sorted(r.value for r in rs)) and m.extra["run_ids"] == ["r0", "r1", "r2"]


def test_recovery_is_judged_higher_is_better_against_its_tolerance(tmp_path):
    """ppl.recovery (reference ppl / model ppl of the same run) moves with the technique, not
    with the eval text or the reference: 2% less recovered is regressed at 1%, 0.1% passes."""
    def recovery(v):
        r = rec("ppl.recovery", v)
        r.higher_is_better = True
        return r

    [v] = judge([recovery(0.95 * 0.98)], [recovery(0.95)], tmp_path / "a")
    assert v.status == "regressed", v.line()
    [v] = judge([recovery(0.95 * 0.999)], [recovery(0.95)], tmp_path / "b")
    assert v.status == "pass", v.line()
    [v] = judge([recovery(0.99)], [recovery(0.95)], tmp_path / "c")
    assert v.status == "improved", v.line()
