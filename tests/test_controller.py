"""One verdict path: a run is judged once (``judge_run`` at session finish, into
verdicts.jsonl), and the terminal line, the Markdown summary, the HTML report, ``harness
baseline check`` and the gate all say the same, also in a shard without the reference test,
where the reference the run measured (``.reference``) decides whether the host moved."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import transformers.models.llama.modeling_llama  # noqa: F401  (see tests/test_plugin.py)

from harness.baselines import verdicts as verdicts_module
from harness.baselines.file import SCHEMA
from harness.baselines.verdicts import read_verdicts
from harness.measure.environment import device_class
from harness.shard import select

pytest_plugins = ["pytester"]

DC = device_class("cpu")
# The reference measured 15 ms against its baseline's 10 ms (the host moved +50%); rtn measured
# 12 ms against 8 ms: alone a regression, with the host's move inconclusive.
SUITE = """
import pytest
from harness.records import Record

class LM:
    name = "harness-tiny"

def _ref(todo):
    return [Record("latency.prefill_ms", 15.0, model="harness-tiny", spec="none", technique="none", n=5,
                   spread={"p10": 14.5, "p90": 15.5})]

@pytest.mark.parametrize("spec, ppl, ms", [("none", 50.0, 15.0), ("rtn:bits=4", 52.0, 12.0),
                                           ("rtn:bits=8", 50.4, 14.0)])
def test_tech(bench, spec, ppl, ms):
    bench.session.caches.reference(LM, ["latency.prefill_ms"], _ref)  # what bench.measure does first
    t = spec.split(":")[0]
    bench.record("ppl.window", ppl, spec=spec, technique=t)
    bench.record("latency.prefill_ms", ms, spec=spec, technique=t, n=5, spread={"p10": ms * 0.97, "p90": ms * 1.03})
"""


def _baseline(root: Path) -> None:
    def ent(spec, ppl, ms):
        return {"model": "harness-tiny", "spec": spec, "profile": "full", "metrics": {
            "ppl.window": {"value": ppl, "direction": "lower", "tolerance": "2%"},
            "latency.prefill_ms": {"value": ms, "direction": "lower", "tolerance": "5%",
                                   "spread": {"p10": ms * 0.97, "p90": ms * 1.03}}}}
    p = root / "default" / f"{DC}.json"
    p.parent.mkdir(parents=True)
    p.write_text(json.dumps({"schema": SCHEMA, "suite": "default", "device_class": DC, "entries": [
        ent("none", 50.0, 10.0), ent("rtn:bits=4", 50.0, 8.0), ent("rtn:bits=8", 50.0, 10.0)]}))


def _counts_line(text: str, prefix: str) -> dict[str, int]:
    line = next(x for x in text.splitlines() if x.startswith(prefix))
    return {k: int(n) for n, k in ((m.group(2), m.group(1)) for m in re.finditer(r"([a-z-]+) (\d+)", line))}


def test_a_shard_without_the_reference_is_judged_once_and_every_reader_agrees(pytester, monkeypatch, capsys):
    from harness.cli import main

    pytester.makepyfile(test_default=SUITE)
    _baseline(pytester.path / "bl")
    ids = [f"test_default.py::test_tech[{s}]" for s in ("none-50.0-15.0", "rtn:bits=4-52.0-12.0",
                                                         "rtn:bits=8-50.4-14.0")]
    shard = next(i for i in (1, 2) if ids[0] not in select(ids, (i, 2)))
    calls = []
    real = verdicts_module.judge_run
    monkeypatch.setattr(verdicts_module, "judge_run", lambda *a, **k: calls.append(1) or real(*a, **k))

    r = pytester.runpytest("--harness-out", "run", "--harness-baselines", "bl", f"--harness-shard={shard}/2",
                           "--harness-markdown", "run/summary.md", "-p", "no:randomly")
    assert len(calls) == 1, f"judge_run called {len(calls)} times in one run"
    run = pytester.path / "run"
    stored = read_verdicts(run)
    assert stored is not None and not any(v.spec == "none" for v in stored)  # the shard lacks the reference
    [lat] = [v for v in stored if v.spec == "rtn:bits=4" and v.metric == "latency.prefill_ms"]
    assert lat.status == "inconclusive" and "host moved" in lat.note
    assert "alone it would have been regressed" in lat.note
    want = dict(Counter(v.status for v in stored))

    terminal = "\n".join(r.outlines)
    assert _counts_line(terminal, "verdicts: ") == want
    assert _counts_line((run / "summary.md").read_text(), "Verdicts vs baseline: ") == want
    capsys.readouterr()
    assert main(["report", str(run), "-o", str(pytester.path / "r.html")]) == 0
    html = (pytester.path / "r.html").read_text()
    assert all(f"{k}" in html for k in want) and "host moved" in html
    assert want.get("regressed") == 1  # rtn:bits=4's perplexity (+4% against 2%)
    assert main(["baseline", "check", str(run), "--baselines", str(pytester.path / "bl")]) == 1
    assert _counts_line(capsys.readouterr().out, "verdicts: ") == want
    assert len(calls) == 1  # every reader above read verdicts.jsonl

    # The gate of a gated run of the same shard judges each test with the same function and
    # reference: the regressed perplexity fails the test; the host moved, so the slower prefill
    # (inconclusive) only warns.
    g = pytester.runpytest("--harness-out", "gated", "--harness-baselines", "bl", f"--harness-shard={shard}/2",
                           "--harness-gate", "-p", "no:randomly")
    fails = [x for x in g.outlines if "harness gate:" in x]  # the failure, and its line in the short summary
    assert any("ppl.window regressed" in x for x in fails) and not any("latency.prefill_ms" in x for x in fails)
    gated = read_verdicts(pytester.path / "gated")
    assert [(v.status, v.metric, v.spec) for v in gated] == [(v.status, v.metric, v.spec) for v in stored]


def test_stored_verdicts_are_rejudged_when_the_baseline_changes(pytester):
    from harness.baselines.verdicts import run_verdicts

    pytester.makepyfile(test_default=SUITE)
    _baseline(pytester.path / "bl")
    pytester.runpytest("--harness-out", "run", "--harness-baselines", "bl", "-k", "none")
    run = pytester.path / "run"
    assert run_verdicts(run) == read_verdicts(run)
    f = pytester.path / "bl" / "default" / f"{DC}.json"
    data = json.loads(f.read_text())
    data["entries"][0]["metrics"]["ppl.window"]["value"] = 40.0  # the reference is now 25% worse
    f.write_text(json.dumps(data))
    [ppl] = [v for v in run_verdicts(run) if v.metric == "ppl.window"]
    assert ppl.status == "regressed" and ppl.baseline == 40.0
    assert [v.status for v in read_verdicts(run) if v.metric == "ppl.window"] == ["pass"]  # the file as written
