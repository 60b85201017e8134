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
