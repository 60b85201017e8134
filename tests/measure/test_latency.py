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
