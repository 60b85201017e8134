"""The pytest plugin, driven through pytester: options, bench records, gating, outcomes,
partial runs, xdist merge. Suites here record constructed values (no model), except
``test_bench_compress_and_measure_on_a_tiny_model``."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

# Imported before pytester's in-process runs, which unload what they import: torch's c10d ops
# cannot be registered twice, and a later test in this process loading a Llama would fail.
import transformers.models.llama.modeling_llama  # noqa: F401

from harness.baselines.file import SCHEMA
from harness.measure.environment import device_class
from harness.records import load_records
from harness.rundir import load_outcomes, read_run_info

pytest_plugins = ["pytester"]

DC = device_class("cpu")

SUITE = """
import pytest

@pytest.mark.parametrize("spec, ppl, ms", [("none", 50.0, 10.0), ("rtn:bits=4", 52.0, 8.0)])
def test_tech(bench, spec, ppl, ms):
    bench.record("ppl.window", ppl, spec=spec, technique=spec.split(":")[0])
    bench.record("latency.prefill_ms", ms, spec=spec, technique=spec.split(":")[0], n=5,
                 spread={"p10": ms * 0.95, "p90": ms * 1.05})
"""


def baseline(root: Path, entries: list[dict], suite: str = "default", dc: str = DC) -> Path:
    p = root / suite / f"{dc}.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"schema": SCHEMA, "suite": suite, "device_class": dc, "entries": entries}))
    return p


def ent(spec: str, **metrics) -> dict:
    return {"model": "harness-tiny", "spec": spec, "profile": "full",
            "metrics": {k.replace("_", ".", 1): v for k, v in metrics.items()}}


def lower(value, tol, **kw):
    return {"value": value, "direction": "lower", "tolerance": tol, **kw}


def test_records_outcomes_run_json_and_junit_xml(pytester):
    pytester.makepyfile(test_default=SUITE)
    out = pytester.path / "run"
    r = pytester.runpytest("--harness-out", str(out), "--junitxml", "junit.xml")
    r.assert_outcomes(passed=2)
    recs = load_records(out)
    assert len(recs) == 4
    info = read_run_info(out)
    assert info["status"] == "complete" and info["device_class"] == DC
    assert {r.run_id for r in recs} == {info["run_id"]}
    assert {r.suite for r in recs} == {"default"}
    assert {r.test_id for r in recs} == {"test_default.py::test_tech[none-50.0-10.0]",
                                         "test_default.py::test_tech[rtn:bits=4-52.0-8.0]"}
    assert all(r.device_class == DC and r.model == "harness-tiny" for r in recs)
    assert sorted(o["outcome"] for o in load_outcomes(out)) == ["passed", "passed"]
    xml = (pytester.path / "junit.xml").read_text()
    assert xml.count("<testcase") == 2 and 'failures="0"' in xml
    r.stdout.fnmatch_lines(["*harness summary*", "*rtn:bits=4*", "*4 records in*"])


def test_plugin_is_inert_without_bench(pytester):
    pytester.makepyfile("def test_plain(): assert 1")
    pytester.runpytest().assert_outcomes(passed=1)
    assert not (pytester.path / "reports").exists()


@pytest.mark.parametrize("args, msg", [
    (["--harness-fail-on", "ppl.window"], "expected METRIC:TOL"),
    (["--harness-fail-on", "ppl.windoww:2%"], "did you mean 'ppl.window'"),
    (["--harness-shard", "3/2"], "need 1 <= I <= N"),
    (["--harness-shard", "a/b"], "expected I/N"),
    (["--harness-threads", "0"], "expected 'auto' or an integer"),
])
def test_bad_options_are_usage_errors(pytester, args, msg):
    pytester.makepyfile(test_default=SUITE)
    r = pytester.runpytest(*args)
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines([f"*{msg}*"])
    assert "Traceback" not in r.stderr.str()


def test_gate_passes_within_tolerance(pytester):
    pytester.makepyfile(test_default=SUITE)
    baseline(pytester.path / "bl", [ent("none", ppl_window=lower(50.5, "2%"), latency_prefill_ms=lower(10.0, "5%")),
                                    ent("rtn:bits=4", ppl_window=lower(52.0, "2%"),
                                        latency_prefill_ms=lower(8.1, "5%"))])
    r = pytester.runpytest("--harness-out", "run", "--harness-baselines", "bl", "--harness-gate")
    r.assert_outcomes(passed=2)
    r.stdout.fnmatch_lines(["*verdicts: pass 4*"])


def test_gate_fails_regressed_test_with_one_line(pytester):
    pytester.makepyfile(test_default=SUITE)
    baseline(pytester.path / "bl", [ent("none", ppl_window=lower(50.0, "2%")),
                                    ent("rtn:bits=4", ppl_window=lower(50.0, "2%"))])
    r = pytester.runpytest("--harness-out", "run", "--harness-baselines", "bl", "--harness-gate", "-W",
                           "ignore::UserWarning")
    r.assert_outcomes(passed=1, failed=1)
    lines = r.stdout.lines
    i = lines.index(next(x for x in lines if x.startswith("_") and "test_tech[rtn:bits=4-52.0-8.0]" in x))
    assert lines[i + 1] == ("harness gate: ppl.window regressed: baseline 50, measured 52 (+4.0%), "
                            "tolerance 2% (harness-tiny rtn:bits=4)")  # one line, no traceback
    assert lines[i + 2].startswith("=")
    # the records of the failing test are kept and its outcome is in the run dir
    assert {o["outcome"] for o in load_outcomes(pytester.path / "run")} == {"passed", "failed"}


def test_fail_on_overrides_tolerance_and_gates_only_that_metric(pytester):
    pytester.makepyfile(test_default=SUITE)
    baseline(pytester.path / "bl", [ent("rtn:bits=4", ppl_window=lower(50.0, "2%"),
                                        latency_prefill_ms=lower(4.0, "5%"))])
    r = pytester.runpytest("--harness-baselines", "bl", "--harness-fail-on", "ppl.window:10%", "-k", "rtn")
    r.assert_outcomes(passed=1)  # +4% ppl is inside 10%; latency regressed but is not gated
    r = pytester.runpytest("--harness-baselines", "bl", "--harness-fail-on", "ppl.window:0.5", "-k", "rtn")
    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines(["*ppl.window regressed: baseline 50, measured 52 (+4.0%), tolerance 0.5 *"])


def test_noise_aware_latency_gate(pytester):
    pytester.makepyfile(test_default=SUITE)
    # +25% prefill but the baseline's p10-p90 overlaps the measured one: noise, not a regression
    baseline(pytester.path / "bl", [ent("rtn:bits=4", latency_prefill_ms=lower(6.4, "5%", spread={"p10": 5.0,
                                                                                                "p90": 7.9}))])
    r = pytester.runpytest("--harness-baselines", "bl", "--harness-fail-on", "latency.prefill_ms:5%", "-k", "rtn")
    r.assert_outcomes(passed=1)
    baseline(pytester.path / "bl", [ent("rtn:bits=4", latency_prefill_ms=lower(6.4, "5%", spread={"p10": 6.0,
                                                                                                "p90": 6.8}))])
    r = pytester.runpytest("--harness-baselines", "bl", "--harness-fail-on", "latency.prefill_ms:5%", "-k", "rtn")
    r.assert_outcomes(failed=1)


def test_missing_baseline_warns_and_fails_only_when_strict(pytester):
    pytester.makepyfile(test_default=SUITE)
    r = pytester.runpytest("--harness-baselines", "nothing", "--harness-gate")
    r.assert_outcomes(passed=2, warnings=2)
    r.stdout.fnmatch_lines(["*HarnessBaselineWarning: 2 metric(s) not compared (new)*no baseline file*"])
    r = pytester.runpytest("--harness-baselines", "nothing", "--harness-gate", "--harness-strict")
    r.assert_outcomes(failed=2)
    r.stdout.fnmatch_lines(["*harness gate: --harness-strict: 2 metric(s) not compared (new)*"])


def test_foreign_device_class_is_never_compared_silently(pytester):
    pytester.makepyfile(test_default=SUITE)
    baseline(pytester.path / "bl", [ent("none", ppl_window=lower(1.0, "2%"))], dc="cuda-nvidia-h100")
    r = pytester.runpytest("--harness-baselines", "bl", "--harness-gate", "-k", "none")
    r.assert_outcomes(passed=1, warnings=1)
    r.stdout.fnmatch_lines([f"*not-comparable*cuda-nvidia-h100; this device is {DC}*"])


def test_corrupt_baseline_fails_gated_test_with_one_line(pytester):
    pytester.makepyfile(test_default=SUITE)
    p = baseline(pytester.path / "bl", [])
    p.write_text("{oops")
    r = pytester.runpytest("--harness-baselines", "bl", "--harness-gate", "-k", "none")
    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines(["*harness gate: *default*.json: not valid JSON (line 1 col 2*"])
    r = pytester.runpytest("--harness-baselines", "bl", "-k", "none")  # not gating: a warning
    r.assert_outcomes(passed=1, warnings=1)


def test_x_and_ctrl_c_leave_a_partial_run_with_records(pytester):
    pytester.makepyfile(test_default="""
        def test_a(bench):
            bench.record("ppl.window", 1.0)
            raise KeyboardInterrupt
        def test_b(bench):
            bench.record("ppl.window", 2.0)
    """)
    r = pytester.runpytest("--harness-out", "run", no_reraise_ctrlc=True)
    assert r.ret == pytest.ExitCode.INTERRUPTED
    info = read_run_info(pytester.path / "run")
    assert info["status"] == "partial" and "interrupted" in info["partial_reason"]
    assert [x.value for x in load_records(pytester.path / "run")] == [1.0]
    pytester.makepyfile(test_default="""
        def test_a(bench):
            bench.record("ppl.window", 1.0)
            assert 0
        def test_b(bench):
            bench.record("ppl.window", 2.0)
    """)
    r = pytester.runpytest("--harness-out", "run2", "-x")
    r.assert_outcomes(failed=1)
    assert read_run_info(pytester.path / "run2")["status"] == "partial"
    r.stdout.fnmatch_lines(["*PARTIAL RUN: stopped early*"])


def test_markers_shard_quick_and_markdown(pytester):
    pytester.makepyfile(test_default="""
        import pytest
        @pytest.mark.gpu
        def test_gpu(bench): bench.record("ppl.window", 1.0)
        @pytest.mark.slow
        def test_slow(bench): bench.record("ppl.window", 1.0)
        @pytest.mark.parametrize("i", range(6))
        def test_many(bench, i): bench.record("size.bytes", i)
    """)
    r = pytester.runpytest("--harness-device", "cpu", "--harness-quick", "-rs", "--harness-out", "run",
                           "--harness-markdown", "sum.md")
    r.assert_outcomes(passed=6, skipped=2)
    r.stdout.fnmatch_lines(["*needs a CUDA GPU*", "*marked slow: skipped in --harness-quick mode*"])
    assert "| harness-tiny | none |" in (pytester.path / "sum.md").read_text()
    assert {r.extra["profile"] for r in load_records(pytester.path / "run")} == {"quick"}
    ran = []
    for i in (1, 2, 3):
        r = pytester.runpytest("--harness-shard", f"{i}/3", "-k", "many", "--harness-out", "shards")
        ran.append(r.parseoutcomes()["passed"])
    assert ran == [2, 2, 2]
    assert sorted(x.value for x in load_records(pytester.path / "shards")) == [0, 1, 2, 3, 4, 5]
    assert len(list((pytester.path / "shards").glob("records-shard*of3-main.jsonl"))) == 3


def test_xdist_merge_loses_and_duplicates_nothing(pytester):
    pytester.makepyfile(test_default="""
        import pytest
        @pytest.mark.parametrize("i", range(8))
        def test_many(bench, i):
            bench.record("size.bytes", i)
            bench.record("size.params", 100 + i)
    """)
    r = pytester.runpytest_subprocess("-n", "2", "--harness-out", "run", "-p", "no:cacheprovider")
    r.assert_outcomes(passed=8)
    out = pytester.path / "run"
    files = sorted(p.name for p in out.glob("records-*.jsonl"))
    assert files == ["records-gw0.jsonl", "records-gw1.jsonl"]
    recs = load_records(out)
    assert sorted(x.value for x in recs if x.metric == "size.bytes") == list(range(8))
    assert len(recs) == 16 and len({x.record_id for x in recs}) == 16
    assert len({x.run_id for x in recs}) == 1 and read_run_info(out)["run_id"] == recs[0].run_id
    assert len(load_outcomes(out)) == 8
    r.stdout.fnmatch_lines(["*16 records in*"])


TECH_CONFTEST = """
import torch
from harness.techniques.base import TECHNIQUES, Technique, register

class Half(Technique):
    name = "test-half"
    storage = "packed"
    def apply(self, model, calibration=None):
        return model.to(torch.bfloat16)

class GpuOnly(Technique):
    name = "test-gpu-only"
    requires_cuda = True
    def apply(self, model, calibration=None):
        return model

for cls in (Half, GpuOnly):
    if cls.name not in TECHNIQUES:  # in-process pytester runs share the registry
        register(cls)
"""


def test_bench_compress_and_measure_on_a_tiny_model(pytester, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from harness.models.zoo import _tiny_tokenizer

    tok = _tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256)
    import torch

    torch.manual_seed(0)
    mdir = tmp_path / "tiny"
    LlamaForCausalLM(cfg).save_pretrained(mdir)
    tok.save_pretrained(mdir)
    pytester.makeconftest(TECH_CONFTEST)
    pytester.makepyfile(test_default="""
        import pytest
        M = ["size.bytes", "size.compression_ratio", "ppl.window", "fidelity.kl"]
        @pytest.mark.parametrize("spec", ["none", "test-half", "test-gpu-only"])
        def test_t(bench, spec):
            res = bench.compress(spec)
            bench.measure(res, metrics=M)
    """)
    r = pytester.runpytest("--harness-model", str(mdir), "--harness-out", "run", "--harness-quick",
                           "--harness-device", "cpu", "-rs")
    r.assert_outcomes(passed=2, skipped=1)
    r.stdout.fnmatch_lines(["*test-gpu-only needs a CUDA GPU*"])
    recs = {(x.spec, x.metric): x for x in load_records(pytester.path / "run")}
    assert recs[("none", "size.compression_ratio")].value == 1.0
    half = recs[("test-half", "size.compression_ratio")]
    assert half.value == pytest.approx(recs[("none", "size.bytes")].value / recs[("test-half", "size.bytes")].value)
    assert 1.9 < half.value < 2.0  # fp32 -> bf16 halves the tensors (header aside)
    assert recs[("test-half", "ppl.window")].extra["reference"] == recs[("none", "ppl.window")].value
    assert recs[("none", "fidelity.kl")].value == 0.0 and recs[("test-half", "fidelity.kl")].value > 0
    assert recs[("test-half", "compress.wall_s")].storage == "packed"
    assert ("none", "compress.wall_s") not in recs
    # the reference was measured once for the run and stored for other workers
    assert len(list((pytester.path / "run" / ".reference").glob("*.json"))) == 1


def test_technique_params_follow_the_registry(monkeypatch):
    from harness.suite import technique_params
    from harness.techniques import IMPORT_ERRORS, TECHNIQUES

    monkeypatch.setitem(IMPORT_ERRORS, "harness.techniques.broken", "No module named 'missing_dep'")
    quick = {p.id: p for p in technique_params(quick=True)}
    full = [p.id for p in technique_params(quick=False)]
    assert next(iter(quick)) == "none"
    for name in TECHNIQUES:
        specs = TECHNIQUES.get(name).suite_specs
        if specs:
            assert specs[0] in quick and set(specs) <= set(full)
        else:
            assert [m.kwargs["reason"] for m in quick[name].marks] == [
                f"technique {name!r} declares no suite_specs"]
    assert "missing_dep" in quick["broken"].marks[0].kwargs["reason"]


def test_derived_speedup_band_covers_both_measurements():
    from harness.evaluation import derive
    from harness.records import Record

    ref = Record("latency.prefill_ms", 10.0, spread={"p10": 9.0, "p90": 12.0})
    r = derive("latency.speedup_prefill", Record("latency.prefill_ms", 5.0, spread={"p10": 4.0, "p90": 6.0}), ref)
    assert r.value == 2.0 and r.spread == {"p10": 9.0 / 6.0, "p90": 12.0 / 4.0}
    tps = Record("latency.decode_tok_s", 100.0, spread={"p10": 90.0, "p90": 110.0})
    got = Record("latency.decode_tok_s", 50.0, spread={"p10": 45.0, "p90": 55.0})
    r = derive("latency.speedup_decode", got, tps)
    assert r.value == 0.5 and r.spread == {"p10": 45.0 / 110.0, "p90": 55.0 / 90.0}
    na = derive("latency.speedup_decode", Record.na("latency.decode_tok_s", "boom"), tps)
    assert na.status == "na" and "boom" in na.reason
