"""Budgeted multi-objective search over compression configurations (``harness search``).

- ``frontier``: objectives, constraints, budgets and the Pareto frontier (plain Python; the
  report and ``--show`` read a run through it).
- ``space``: search-space YAML files -> spec strings for ``harness.techniques.spec.make``.
- ``evaluator``: compress and measure a spec through ``harness.evaluation`` (proxy, full).
- ``store``: the run-directory files of a search (settings, points, optuna journal).
- ``engine``: the loop (optuna's multi-objective TPE, proxy screening, budget, resume).
"""
