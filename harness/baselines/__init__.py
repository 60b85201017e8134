"""Baselines and verdicts. ``file``: the baseline file schema and its migration; ``store``:
the files under one root, record keys, combined repeats, ``update``; ``judge``: one metric's
statistical verdict; ``verdicts``: a run's verdicts (``judge_run``), ``gate`` and the run
directory's ``verdicts.jsonl``. No re-exports: import from the module that owns a name."""
