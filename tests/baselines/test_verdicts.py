"""Baselines: tolerance parsing, noise-aware verdicts, device classes, corrupt files, update."""
from __future__ import annotations

import dataclasses
import json

import pytest

from harness.baselines.file import SCHEMA, BaselineError, MetricBaseline, load_baseline, parse_tolerance, resolve_spec
from harness.baselines.judge import compare
from harness.baselines.store import BaselineStore, parse_fail_on, update
from harness.baselines.verdicts import judge_run
from harness.records import Record

DC = "cpu-test-2c"


def verdicts(records, store, dc=None, *, missing=True, overrides=None, reference_records=(), fingerprint=None):
    """``judge_run`` as the tests call it: ``missing=False`` leaves out metrics a test did not measure."""
    vs = judge_run(records, store, fingerprint=fingerprint, reference=reference_records, tolerances=overrides)
    return vs if missing else [v for v in vs if v.status != "missing"]


def rec(metric, value, spread=None, model="m", spec="rtn:bits=4", suite="default", dc=DC, profile="full"):
    return Record(metric, value, spread=spread or {}, model=model, spec=spec, technique=spec.split(":")[0],
                  suite=suite, device_class=dc, test_id=f"t[{spec}]", extra={"profile": profile})


def write_baseline(root, entries, suite="default", dc=DC):
    data = {"schema": SCHEMA, "suite": suite, "device_class": dc, "entries": entries}
    p = root / suite / f"{dc}.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data))
    return p


def entry(metrics, model="m", spec="rtn:bits=4", profile="full"):
    return {"model": model, "spec": spec, "profile": profile, "metrics": metrics}


@pytest.mark.parametrize("text, value, relative", [("2%", 0.02, True), ("0.01", 0.01, False), (" 10% ", 0.1, True)])
def test_parse_tolerance(text, value, relative):
    t = parse_tolerance(text)
    assert t.value == pytest.approx(value) and t.relative is relative


@pytest.mark.parametrize("text, match", [
    ("ppl.window", "expected METRIC:TOL"), ("ppl.window:", "expected METRIC:TOL"),
    ("ppl.windw:2%", "did you mean 'ppl.window'"), ("ppl.window:two%", "not a number"),
    ("ppl.window:-1", ">= 0")])
def test_parse_fail_on_errors_are_one_line(text, match):
    with pytest.raises(ValueError, match=match) as e:
        parse_fail_on(text)
    assert "\n" not in str(e.value)


def test_relative_and_absolute_tolerance_verdicts():
    base = MetricBaseline(50.0, False, parse_tolerance("2%"))
    assert compare(rec("ppl.window", 50.9), base).status == "pass"  # +1.8%
    v = compare(rec("ppl.window", 51.2), base)  # +2.4% > 2%
    assert v.status == "regressed"
    line = v.line()
    assert "ppl.window" in line and "baseline 50" in line and "measured 51.2" in line and "tolerance 2%" in line
    assert compare(rec("ppl.window", 48.0), base).status == "improved"
    kl = MetricBaseline(0.05, False, parse_tolerance("0.01"))
    assert compare(rec("fidelity.kl", 0.059), kl).status == "pass"
    assert compare(rec("fidelity.kl", 0.061), kl).status == "regressed"
    # higher-is-better direction
    tps = MetricBaseline(100.0, True, parse_tolerance("10%"))
    assert compare(rec("latency.decode_tok_s", 85.0), tps).status == "regressed"
    assert compare(rec("latency.decode_tok_s", 115.0), tps).status == "improved"


def test_latency_change_inside_spread_is_noise_not_regression():
    base = MetricBaseline(10.0, False, parse_tolerance("5%"), {"p10": 8.0, "p90": 14.0})
    noisy = compare(rec("latency.prefill_ms", 12.0, {"p10": 11.0, "p90": 13.5}), base)  # +20%, overlapping
    assert noisy.status == "pass" and "within noise" in noisy.note
    real = compare(rec("latency.prefill_ms", 20.0, {"p10": 18.0, "p90": 22.0}), base)  # bands disjoint
    assert real.status == "regressed"
    # without a spread the same +20% is a regression
    flat = MetricBaseline(10.0, False, parse_tolerance("5%"))
    assert compare(rec("latency.prefill_ms", 12.0), flat).status == "regressed"


def test_verdicts_new_missing_and_foreign_device(tmp_path):
    write_baseline(tmp_path, [entry({"ppl.window": {"value": 50.0, "direction": "lower", "tolerance": "2%"},
                                     "size.bytes": {"value": 100.0, "direction": "lower", "tolerance": "1%"}})])
    store = BaselineStore(tmp_path)
    vs = verdicts([rec("ppl.window", 50.5), rec("fidelity.kl", 0.1)], store, DC)
    by = {v.metric: v.status for v in vs}
    assert by == {"ppl.window": "pass", "fidelity.kl": "new", "size.bytes": "missing"}
    other = verdicts([rec("ppl.window", 50.5, dc="cuda-h100")], store, "cuda-h100")
    assert [v.status for v in other] == ["not-comparable"]
    assert DC in other[0].note and "cuda-h100" in other[0].note
    # no baselines at all: new, with the reason
    none = verdicts([rec("ppl.window", 1.0)], BaselineStore(tmp_path / "nope"), DC)
    assert none[0].status == "new" and "no baseline file" in none[0].note


def test_profiles_are_separate_entries(tmp_path):
    write_baseline(tmp_path, [entry({"ppl.window": {"value": 50.0, "direction": "lower", "tolerance": "2%"}},
                                    profile="quick")])
    store = BaselineStore(tmp_path)
    assert verdicts([rec("ppl.window", 60.0, profile="quick")], store, DC)[0].status == "regressed"
    assert verdicts([rec("ppl.window", 60.0, profile="full")], store, DC)[0].status == "new"


@pytest.mark.parametrize("mutate, match", [
    (lambda d: "{not json", "not valid JSON"),
    (lambda d: {**d, "schema": "v0"}, "schema"),
    (lambda d: {**d, "entries": {}}, "'entries' must be a list"),
    (lambda d: _metric(d, direction="down"), "direction"),
    (lambda d: _metric(d, tolerance="lots"), "tolerance"),
    (lambda d: _metric(d, value="12"), "not a finite number"),
    (lambda d: _metric(d, spread={"p10": 5, "p90": 1}), "p10 5 > p90 1"),
    (lambda d: {**d, "entries": d["entries"] * 2}, "duplicate entry"),
    (lambda d: {**d, "device_class": "cpu-other-8c"}, "does not match the file name"),
])
def test_corrupt_or_hand_edited_baseline_is_one_line_error(tmp_path, mutate, match):
    p = write_baseline(tmp_path, [entry({"ppl.window": {"value": 50.0, "direction": "lower", "tolerance": "2%"}})])
    data = mutate(json.loads(p.read_text()))
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    with pytest.raises(BaselineError, match=match) as e:
        load_baseline(p)
    assert "\n" not in str(e.value) and str(p) in str(e.value)


def _metric(d, **kw):
    d["entries"][0]["metrics"]["ppl.window"].update(kw)
    return d


def test_update_writes_reviewable_file_and_keeps_hand_tuned_tolerance(tmp_path):
    recs = [rec("ppl.window", 50.0), rec("latency.prefill_ms", 10.0, {"p10": 9.0, "p90": 11.0, "std": 1.0}),
            Record.na("energy.j_per_token", "no GPU", model="m", spec="rtn:bits=4", suite="default",
                      device_class=DC)]
    [(path, n, kept)] = update(recs, tmp_path, run_id="r1")
    assert path == tmp_path / "default" / f"{DC}.json" and n == 1 and kept == 0
    bf = load_baseline(path)
    ent = bf.entries[("m", resolve_spec("rtn:bits=4"), "full")]
    assert set(ent.metrics) == {"ppl.window", "latency.prefill_ms"}  # N/A is never a baseline
    assert ent.metrics["latency.prefill_ms"].spread == {"p10": 9.0, "p90": 11.0}
    assert str(ent.metrics["ppl.window"].tolerance) == "1%"
    data = json.loads(path.read_text())
    data["entries"][0]["metrics"]["ppl.window"]["tolerance"] = "5%"  # reviewer loosens it by hand
    path.write_text(json.dumps(data))
    other = rec("ppl.window", 30.0, spec="none")
    update([rec("ppl.window", 51.0), other], tmp_path)
    bf = load_baseline(path)
    assert str(bf.entries[("m", resolve_spec("rtn:bits=4"), "full")].metrics["ppl.window"].tolerance) == "5%"
    assert bf.entries[("m", resolve_spec("rtn:bits=4"), "full")].metrics["ppl.window"].value == 51.0
    assert ("m", resolve_spec("none"), "full") in bf.entries
    # entries not in the new run are kept unless --prune
    update([other], tmp_path)
    assert len(load_baseline(path).entries) == 2
    update([other], tmp_path, prune=True)
    assert list(load_baseline(path).entries) == [("m", resolve_spec("none"), "full")]


# -- keys pin the full resolved config (issue 12) ------------------------------------------------

def test_resolved_key_includes_defaults_and_version():
    assert resolve_spec("rtn:bits=4") == "rtn:bits=4,group=none,head=false,sym=true@v1"
    assert resolve_spec("rtn:bits=4") == resolve_spec("rtn:bits=4,sym=true")  # same behaviour, same key
    assert resolve_spec("none") == "none@v1"


def test_a_changed_default_is_never_compared_with_the_old_numbers(tmp_path):
    """A record whose full config differs from the baseline's (a default changed between the
    two runs) is 'new', not a silent comparison with numbers measured under the old default."""
    r = rec("ppl.window", 50.0)
    update([r], tmp_path)
    moved = dataclasses.replace(rec("ppl.window", 70.0), config={"bits": 4, "group": 64, "sym": True})
    [v] = verdicts([moved], BaselineStore(tmp_path), DC, missing=False)
    assert v.status == "new"
    same = dataclasses.replace(rec("ppl.window", 50.4), config={"bits": 4, "group": None, "sym": True, "head": False})
    [v] = verdicts([same], BaselineStore(tmp_path), DC, missing=False)
    assert v.status == "pass"


def test_schema_1_file_loads_migrated_and_migrate_rewrites_it(tmp_path, capsys):
    from harness.cli import main

    old = {"schema": "harness-baseline/1", "suite": "default", "device_class": DC, "entries": [
        {"model": "m", "spec": "rtn:bits=4", "profile": "full",
         "metrics": {"ppl.window": {"value": 50.0, "direction": "lower", "tolerance": "2%"}}}]}
    path = tmp_path / "default" / f"{DC}.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(old))
    ent = load_baseline(path).entries[("m", resolve_spec("rtn:bits=4"), "full")]
    assert ent.migrated and ent.metrics["ppl.window"].value == 50.0
    [v] = verdicts([rec("ppl.window", 50.5)], BaselineStore(tmp_path), DC, missing=False)
    assert v.status == "pass"
    assert main(["baseline", "migrate", "--baselines", str(tmp_path)]) == 0
    data = json.loads(path.read_text())
    assert data["schema"] == "harness-baseline/2" and data["entries"][0]["resolved"] == resolve_spec("rtn:bits=4")
    assert data["entries"][0]["migrated"] is True
    assert main(["baseline", "migrate", "--baselines", str(tmp_path)]) == 0
    assert "nothing to migrate" in capsys.readouterr().out


# -- host drift: raw latency is judged only when the run's own reference agrees (issue 17) ----

def _lat(spec, prefill, tok_s, speedup=None):
    tech = spec.split(":")[0]
    out = [dataclasses.replace(rec("latency.prefill_ms", prefill, spec=spec), technique=tech),
           dataclasses.replace(rec("latency.decode_tok_s", tok_s, spec=spec), technique=tech)]
    if speedup is not None:
        out.append(dataclasses.replace(rec("latency.speedup_decode", speedup, spec=spec), technique=tech))
    return out


def test_a_slower_host_makes_raw_latency_inconclusive_not_regressed(tmp_path):
    update(_lat("none", 10.0, 100.0) + _lat("rtn:bits=4", 8.0, 120.0, 1.2), tmp_path)
    store = BaselineStore(tmp_path)
    # the whole machine is 50% slower: reference and model alike; the speed-up is unchanged
    vs = {(v.spec, v.metric): v for v in verdicts(_lat("none", 15.0, 66.0) + _lat("rtn:bits=4", 12.0, 80.0, 1.21),
                                                     store, DC, missing=False)}
    assert vs[("rtn:bits=4", "latency.prefill_ms")].status == "inconclusive"
    assert "host moved" in vs[("rtn:bits=4", "latency.prefill_ms")].note and "+50%" in vs[
        ("rtn:bits=4", "latency.prefill_ms")].note
    assert vs[("none", "latency.decode_tok_s")].status == "inconclusive"  # the reference is never flagged
    assert vs[("rtn:bits=4", "latency.speedup_decode")].status == "pass"


def test_a_real_slowdown_on_a_steady_host_still_regresses(tmp_path):
    update(_lat("none", 10.0, 100.0) + _lat("rtn:bits=4", 8.0, 120.0, 1.2), tmp_path)
    vs = {(v.spec, v.metric): v for v in verdicts(_lat("none", 10.2, 99.0) + _lat("rtn:bits=4", 12.0, 50.0, 0.5),
                                                     BaselineStore(tmp_path), DC, missing=False)}
    assert vs[("rtn:bits=4", "latency.prefill_ms")].status == "regressed"
    assert vs[("rtn:bits=4", "latency.speedup_decode")].status == "regressed"
    assert vs[("none", "latency.prefill_ms")].status == "pass"


def test_reference_records_from_another_test_inform_the_gate(tmp_path):
    """Per-test gating sees only its own records; the run's reference is passed alongside."""
    update(_lat("none", 10.0, 100.0) + _lat("rtn:bits=4", 8.0, 120.0), tmp_path)
    vs = verdicts(_lat("rtn:bits=4", 12.0, 80.0), BaselineStore(tmp_path), DC, missing=False,
                     reference_records=_lat("none", 15.0, 66.0))
    assert {v.status for v in vs} == {"inconclusive"} and all(v.spec == "rtn:bits=4" for v in vs)
