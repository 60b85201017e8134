"""The default suite: the reference and every registered technique on harness-tiny.

Parametrized from the technique registry (``Technique.suite_specs``), so a technique
joins the suite by registering itself. ``--harness-quick`` runs each technique's first
spec with cheaper measurement settings.
"""
from harness.suite import technique_params


def pytest_generate_tests(metafunc):
    if "spec" in metafunc.fixturenames:
        metafunc.parametrize("spec", technique_params(metafunc.config.getoption("harness_quick"),
                                                      metafunc.config.getoption("harness_technique")))


def test_technique(bench, harness_model, spec):
    result = bench.compress(spec)
    bench.measure(result)
