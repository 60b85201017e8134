"""Each statistical decision on constructed samples whose answer is known."""
from __future__ import annotations

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
