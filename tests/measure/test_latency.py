import pytest

from harness.config import LatencyConfig
from harness.measure.latency import measure_latency, speedup
from harness.measure.timing import Samples, sample
from harness.records import Record

FAST = LatencyConfig(prompt_len=8, decode_tokens=4, warmup=1, min_repeats=3, max_repeats=5, budget_s=0.2)


def test_causal_lm_latency_records_carry_n_spread_and_context(llama):
    recs = {r.metric: r for r in measure_latency(llama, "causal-lm", FAST)}
    assert set(recs) == {"latency.prefill_ms", "latency.decode_ms_per_token", "latency.decode_tok_s"}
    for r in recs.values():
        assert 3 <= r.n <= 5 and r.value > 0
        assert r.spread["p10"] <= r.value <= r.spread["p90"]
        assert r.extra["threads"] >= 1 and r.extra["timer"] == "perf_counter"
    ms = recs["latency.decode_ms_per_token"].value
    assert recs["latency.decode_tok_s"].value == pytest.approx(1e3 / ms, rel=0.5)


def test_encoder_forward_latency_and_decode_is_refused():
    from conftest import random_bert

    model = random_bert()
    recs = measure_latency(model, "encoder", FAST)
    assert [r.metric for r in recs] == ["latency.forward_ms"] and recs[0].n >= 3
    with pytest.raises(ValueError, match="decode/prefill latency asked of an encoder"):
        measure_latency(model, "encoder", FAST, metrics={"latency.decode_tok_s"})


def test_sampling_respects_min_and_max_repeats():
    s = sample(lambda: 1.0, warmup=2, min_repeats=4, max_repeats=6, budget_s=0.0)
    assert s.n == 4
    s = sample(lambda: 1.0, warmup=0, min_repeats=1, max_repeats=6, budget_s=10.0)
    assert s.n == 6


def test_quantiles_and_speedup_direction():
    s = Samples([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s.median == 3.0 and s.quantile(0.1) == pytest.approx(1.4) and s.quantile(0.9) == pytest.approx(4.6)
    assert speedup(Record("latency.prefill_ms", 10), Record("latency.prefill_ms", 5)) == 2.0
    assert speedup(Record("latency.decode_tok_s", 10), Record("latency.decode_tok_s", 15)) == 1.5


class _Slowed(__import__("torch").nn.Module):
    """The same model with a fixed 10 ms added to every forward."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, **kw):
        import time

        time.sleep(0.01)
        return self.inner(**kw)


def test_interleaved_reference_rounds_pair_into_per_round_speedups(llama):
    from harness.evaluation import derive

    recs = {r.metric: r for r in measure_latency(llama, "causal-lm", FAST, reference=_Slowed(llama))}
    for r in recs.values():
        assert len(r.samples["reference_values"]) == len(r.samples["values"]) == r.n
        assert r.extra["pairing"] == "interleaved with the reference"
    pre = recs["latency.prefill_ms"]
    assert sum(q > v for v, q in zip(pre.samples["values"], pre.samples["reference_values"])) > pre.n / 2
    ref = Record("latency.prefill_ms", 1e9)  # a stale once-per-run value: ignored when rounds pair
    sp = derive("latency.speedup_prefill", pre, ref)
    assert sp.extra["pairing"].startswith("per-round ratios") and sp.n == pre.n
    assert sp.value > 1 and sp.samples["values"] == pytest.approx(
        [q / v for v, q in zip(pre.samples["values"], pre.samples["reference_values"])])
    dec = derive("latency.speedup_decode", recs["latency.decode_tok_s"], Record("latency.decode_tok_s", 1.0))
    assert dec.value > 1 and dec.extra["pairing"].startswith("per-round")
    # Without rounds of the reference the ratio is of the two values, labelled as such.
    plain = derive("latency.speedup_prefill", Record("latency.prefill_ms", 2.0), Record("latency.prefill_ms", 3.0))
    assert plain.value == pytest.approx(1.5) and plain.extra["pairing"] == "separate runs"


class _FakeClock:
    """A clock only the timed callables move: each adds its cost, so ratios are exact."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def side(self, cost_s: float):
        def f() -> None:
            self.now += cost_s
        return f


def _work(n: int):
    """``n`` units of pure-Python CPU work: twice the n, about twice the thread time."""
    def f() -> int:
        return sum(i * i for i in range(n))
    return f


def test_ab_timing_median_ratio_lands_on_the_known_cost_factor():
    import time

    from harness.measure.latency import ab_timing

    clock = _FakeClock()
    t = ab_timing([clock.side(0.004), clock.side(0.002), clock.side(0.001)], rounds=5, clock=clock)
    assert len(t.samples) == 3 and all(len(s) == 5 for s in t.samples)
    assert t.medians == pytest.approx((4.0, 2.0, 1.0))
    assert t.ratios() == pytest.approx([2.0] * 5) and t.ratio(2) == pytest.approx(4.0)
    assert t.ratio(side=0, base=1) == pytest.approx(0.5) and t.interval(2) == pytest.approx((4.0, 4.0))
    # Real work on the real thread clock (a neighbour's time slices do not count there).
    cpu = ab_timing([_work(200_000), _work(100_000)], rounds=9, clock=time.thread_time)
    assert cpu.ratio() == pytest.approx(2.0, rel=0.25)
    lo, hi = cpu.interval()
    assert lo <= cpu.ratio() <= hi
    wall = ab_timing([lambda: time.sleep(0.01), lambda: None], rounds=2)  # default clock: perf_counter
    assert min(wall.samples[0]) >= 10.0 - 1e-6


def test_interleaved_rounds_run_abba_after_warmup_and_return_per_side_results():
    from harness.measure.latency import interleaved_rounds

    calls: list[str] = []

    def side(name: str):
        return lambda: calls.append(name) or name

    out = interleaved_rounds([side("A"), side("B")], rounds=4, warmup=0)
    assert "".join(calls) == "ABBAABBA" and out == [["A"] * 4, ["B"] * 4]
    calls.clear()
    seen = []
    interleaved_rounds([side("A"), side("B"), side("C")], rounds=2, warmup=1,
                       on_round=lambda r, got: seen.append((r, got)))
    assert "".join(calls)[3:] == "ABCCBA" and len(calls) == 9  # 3 warm-up calls first, unrecorded
    assert seen == [(0, ["A", "B", "C"]), (1, ["A", "B", "C"])]


@pytest.mark.parametrize("kwargs,match", [
    ({"fns": [lambda: 0, lambda: 0], "rounds": 0}, r"^rounds=0 must be"),
    ({"fns": [lambda: 0, lambda: 0], "rounds": 2, "warmup": -1}, r"^warmup=-1 must be"),
    ({"fns": [lambda: 0, "not a function"], "rounds": 2}, r"^fns\[1\]='not a function' is not callable"),
    ({"fns": [lambda: 0], "rounds": 2}, r"need at least two callables"),
])
def test_ab_timing_refuses_bad_arguments_in_one_line(kwargs, match):
    from harness.measure.latency import ab_timing

    with pytest.raises(ValueError, match=match) as e:
        ab_timing(**kwargs)
    assert "\n" not in str(e.value)


def test_decode_step_ms_reads_every_clock_around_the_same_cached_steps(llama):
    import time

    import torch

    from harness.measure.latency import decode_step_ms

    ids = torch.randint(0, 100, (1, 8), generator=torch.Generator().manual_seed(0))
    wall, cpu = decode_step_ms(llama, ids, 4, clocks=(time.perf_counter, time.thread_time))
    assert wall > 0 and cpu > 0
    with pytest.raises(ValueError, match="^steps=0 must be"):
        decode_step_ms(llama, ids, 0)
