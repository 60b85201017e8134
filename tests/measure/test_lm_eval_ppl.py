"""lm-eval perplexity: progress bars silenced for the call only, limit honoured."""
from __future__ import annotations

import importlib

from harness.measure.lm_eval_ppl import _TQDM_USERS, perplexity_lm_eval


def test_no_progress_bars_and_tqdm_restored(tiny_lm, capfd):
    before = {n: getattr(importlib.import_module(n), "tqdm", None) for n in _TQDM_USERS}
    out = perplexity_lm_eval(tiny_lm.model, tiny_lm.tokenizer, limit=2)
    err = capfd.readouterr().err
    assert "it/s" not in err and "%|" not in err, err[-300:]
    assert out["documents"] == 2 and out["tokens"] > 0 and 1 < out["token_perplexity"] < 1e4
    assert all(getattr(importlib.import_module(n), "tqdm", None) is before[n] for n in _TQDM_USERS)
