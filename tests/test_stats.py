"""Each statistical decision on constructed samples whose answer is known."""
from __future__ import annotations

import math

import numpy as np
import pytest

from harness import stats


def _lat(median: float, n: int = 30, spread: float = 0.02, seed: int = 0) -> list[float]:
    g = np.random.default_rng(seed)
    return list(median * (1 + spread * g.standard_normal(n)))


def test_ratio_of_medians_detects_a_clear_slowdown_and_passes_noise():
    base = _lat(10.0, seed=1)
    slow = stats.ratio_of_medians(_lat(11.5, seed=2), base, higher_is_better=False)
    assert 0.12 < slow.est < 0.18 and slow.lo > 0.10
    assert stats.decide(slow, 0.10)[0] == "regressed"
    same = stats.ratio_of_medians(_lat(10.0, seed=3), base, higher_is_better=False)
    assert stats.decide(same, 0.10)[0] == "pass"
    fast = stats.ratio_of_medians(_lat(7.0, seed=4), base, higher_is_better=False)
    assert stats.decide(fast, 0.10)[0] == "improved"


def test_higher_is_better_flips_the_worse_direction():
    base = _lat(100.0, seed=1)
    worse = stats.ratio_of_medians(_lat(80.0, seed=2), base, higher_is_better=True)
    assert worse.est == pytest.approx(0.2, abs=0.02) and stats.decide(worse, 0.1)[0] == "regressed"


def test_too_noisy_to_decide_is_inconclusive_with_the_samples_needed():
    base = _lat(10.0, n=4, spread=0.3, seed=5)
    run = _lat(11.2, n=4, spread=0.3, seed=6)
    ch = stats.ratio_of_medians(run, base, higher_is_better=False)
    status, why = stats.decide(ch, 0.10)
    assert status == "inconclusive"
    assert "samples" in why and "have 4" in why


def test_too_few_samples_is_an_error_not_a_verdict():
    with pytest.raises(ValueError, match=">= 2 samples"):
        stats.ratio_of_medians([1.0], [1.0, 2.0], False)


def test_paired_ppl_sees_a_small_shift_an_unpaired_test_cannot():
    g = np.random.default_rng(0)
    base = 128 * (3.0 + 0.8 * g.standard_normal(64))       # windows differ a lot from each other
    run = base + 127 * np.log(1.01)                          # every window +1% perplexity
    ppl_b = float(np.exp(base.sum() / (64 * 127)))
    ppl_r = float(np.exp(run.sum() / (64 * 127)))
    paired = stats.paired_ppl_change(run, base, ppl_r, ppl_b)
    assert paired.lo > 0.009 and paired.hi < 0.011
    unpaired = stats.unpaired_ppl_change(run, base, ppl_r, ppl_b)
    assert unpaired.lo < 0 < unpaired.hi                     # the window variance swamps it
    assert stats.decide(paired, 0.005)[0] == "regressed"
    assert stats.decide(paired, 0.02)[0] == "pass"


def test_identical_windows_give_a_zero_width_pass():
    base = [300.0, 310.0, 290.0]
    ch = stats.paired_ppl_change(base, base, 10.0, 10.0)
    assert (ch.est, ch.lo, ch.hi) == (0.0, 0.0, 0.0)
    assert stats.decide(ch, 0.0)[0] == "pass"


def test_mcnemar_on_discordant_pairs():
    n = 4000
    base = np.ones(n, bool)
    run = base.copy()
    run[:80] = False                     # 80 tokens lost agreement, none gained: 2% worse
    ch = stats.paired_proportion_change(run, base, higher_is_better=True)
    assert ch.est == pytest.approx(0.02)
    assert ch.p_value < 1e-20
    assert stats.decide(ch, 0.01)[0] == "regressed"
    run[100:180] = False
    run2 = base.copy()
    run2[:40], run2[40:80] = False, True  # balanced discordance: no change
    base2 = base.copy()
    base2[40:80] = False
    ch2 = stats.paired_proportion_change(run2, base2)
    assert ch2.est == 0 and ch2.p_value == pytest.approx(1.0)


def test_pack_bits_round_trips():
    g = np.random.default_rng(0)
    bits = g.random(1001) > 0.3
    words = stats.pack_bits(list(bits))
    assert all(isinstance(w, int) and 0 <= w < 2**30 for w in words)
    assert (stats.unpack_bits(words, 1001) == bits).all()


def test_inconclusive_exactly_on_the_tolerance():
    ch = stats.Interval(0.1, 0.05, 0.15, 10, "t")
    assert stats.decide(ch, 0.1) == ("inconclusive", "the interval straddles the tolerance; far more samples "
                                                     "(the estimate sits on the tolerance) would decide")


@pytest.mark.parametrize("est,lo,hi,status,why", [
    (0.13, 0.05, 0.21, "regressed", "by its estimate"),     # beyond 10% and real, not shown beyond 10%
    (0.13, 0.11, 0.15, "regressed", ""),                    # shown beyond the tolerance
    (0.13, -0.02, 0.28, "inconclusive", "includes no change"),
    (0.06, 0.01, 0.12, "inconclusive", "straddles"),       # real, but may or may not exceed 10%
    (0.06, 0.01, 0.09, "pass", ""),
    (-0.13, -0.21, -0.05, "improved", "by its estimate"),
    (-0.13, -0.28, 0.02, "pass", ""),                       # cannot be a regression beyond 10%
])
def test_decide_needs_an_estimate_beyond_the_tolerance_and_a_real_change(est, lo, hi, status, why):
    got, note = stats.decide(stats.Interval(est, lo, hi, 30, "t"), 0.10)
    assert got == status and why in note, (got, note)


def test_false_alarm_rate_on_no_change_stays_under_the_one_sided_level():
    """Two runs of the same thing, noise sd 12% per sample and 8 samples: the estimate alone
    lands beyond the 10% tolerance in about 8% of pairs; 'regressed' also needs the interval
    to exclude no change, so it happens at most as often as the 2.5% one-sided level allows."""
    beyond = alarms = 0
    for seed in range(300):
        base, run = _lat(10.0, n=8, spread=0.12, seed=2 * seed), _lat(10.0, n=8, spread=0.12, seed=2 * seed + 1)
        ch = stats.ratio_of_medians(run, base, higher_is_better=False)
        beyond += ch.est > 0.10
        alarms += stats.decide(ch, 0.10)[0] == "regressed"
    assert beyond >= 15 and alarms / 300 <= 0.025, (beyond, alarms)


def test_a_real_change_just_beyond_the_tolerance_is_found_most_of_the_time():
    """A 15% slower forward with 6% noise per sample and 20 samples: found in >= 90 of 100
    pairs. The old rule (the whole interval beyond the tolerance) needs a change of about
    tolerance + 2 sd and finds fewer than half of them."""
    cs = [stats.ratio_of_medians(_lat(11.5, n=20, spread=0.06, seed=2 * s),
                                 _lat(10.0, n=20, spread=0.06, seed=2 * s + 1), higher_is_better=False)
          for s in range(100)]
    found = sum(stats.decide(c, 0.10)[0] == "regressed" for c in cs)
    assert found >= 90 and sum(c.lo > 0.10 for c in cs) < 50, found


def test_samples_needed_count_only_the_part_that_samples_narrow():
    """Run-to-run noise added by ``widen`` does not shrink with this run's samples: the count
    is for the within-run part only, and none is promised when the noise alone is wider than
    the margin to the tolerance."""
    own = stats.Interval(0.08, 0.04, 0.12, 10, "t")                 # +-4% from 10 samples, 2% from 10%
    assert stats.decide(own, 0.10)[1].endswith("about 40 samples (have 10) would decide")  # 10 * (4/2)^2
    some = stats.widen(own, 0.015, "noise")
    assert some.fixed == pytest.approx(0.015)
    k = math.ceil(10 * (0.04 / math.sqrt(0.02 ** 2 - 0.015 ** 2)) ** 2)  # 92, not 10 * (4.27/2)^2 = 46
    assert stats.decide(some, 0.10)[1].endswith(f"about {k} samples (have 10) would decide")
    status, why = stats.decide(stats.widen(own, 0.025, "noise"), 0.10)
    assert status == "inconclusive" and "only repeated runs narrow" in why and "samples" not in why
