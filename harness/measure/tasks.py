"""Task accuracy through lm-eval (zero-shot ``acc`` / ``acc_norm`` with their stderr), on
the in-memory model, offline.

Any lm-eval task whose data is in the local datasets cache runs (``HF_DATASETS_OFFLINE=1``);
the bundled ``harness_cloze`` (``harness/tasks``) needs no cache at all. A task whose dataset
is missing is a one-line error naming the dataset and how to provide it.
"""
from __future__ import annotations

import difflib
import functools
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

import torch

from harness.measure.lm_eval_ppl import TASK_DIR, _quiet_progress_bars
from harness.stats import pack_bits

BUNDLED = ("harness_cloze",)


def _offline() -> None:
    """Offline for this process: also in huggingface_hub / datasets when they were imported
    before (they read the variables at import), so a missing dataset fails at once, no retries."""
    for k, v in (("HF_DATASETS_OFFLINE", "1"), ("HF_HUB_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false"),
                 ("TQDM_DISABLE", "1")):
        os.environ.setdefault(k, v)
    if os.environ["HF_HUB_OFFLINE"] == "1":
        for mod, attrs in (("huggingface_hub.constants", ("HF_HUB_OFFLINE",)),
                           ("datasets.config", ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))):
            if mod in sys.modules:
                for a in attrs:
                    setattr(sys.modules[mod], a, True)
    for name in ("lm-eval", "lm_eval", "lm_eval.evaluator", "lm_eval.api.task", "lm_eval.tasks"):
        logging.getLogger(name).setLevel(logging.ERROR)


def task_manager(names: list[str]):
    """A TaskManager holding the bundled tasks, plus lm-eval's own when a name needs them;
    unknown names are a one-line error with close matches."""
    _offline()
    tm = _manager(any(n not in BUNDLED for n in names))
    for n in names:
        if n not in tm.all_tasks:
            close = difflib.get_close_matches(n, tm.all_tasks, n=3)
            hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"unknown lm-eval task {n!r}{hint} (bundled: {', '.join(BUNDLED)}; "
                             "others: any task lm-eval lists)")
    return tm


@functools.lru_cache(maxsize=2)
def _manager(defaults: bool):
    """One TaskManager per process (indexing lm-eval's own tasks takes seconds)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASK_DIR), include_defaults=defaults)


def check_tasks(names: list[str], tm=None) -> None:
    """Load each task's dataset now (offline), so a missing one fails before any measuring."""
    tm = tm or task_manager(names)
    for n in names:
        try:
            tm.load([n])
        except Exception as e:  # datasets raises ConnectionError/FileNotFoundError/ValueError offline
            path, name = _dataset_of(tm, n)
            ds = repr(path) + (f", {name!r}" if name else "")
            raise ValueError(
                f"lm-eval task {n!r}: its dataset {ds} is not in the local datasets cache (offline; "
                f"{str(e).splitlines()[0][:100] if str(e) else type(e).__name__}); provide it by running "
                f"python -c \"import datasets; datasets.load_dataset({ds})\" once with network access, or point "
                "HF_HOME / HF_DATASETS_CACHE at a cache that holds it") from None


def _dataset_of(tm, task: str) -> tuple[str, str | None]:
    """``dataset_path`` / ``dataset_name`` from the task's YAML (read as text: lm-eval YAMLs
    carry ``!function`` tags), following one ``include``."""
    entry = tm.task_index.get(task)
    path = getattr(entry, "yaml_path", None)
    found: dict[str, str] = {}
    for _ in range(3):
        if path is None or not Path(path).is_file():
            break
        text = Path(path).read_text()
        for key in ("dataset_path", "dataset_name"):
            m = re.search(rf"^{key}:\s*(\S+)", text, re.M)
            if m and key not in found:
                found[key] = m.group(1).strip("'\"")
        inc = re.search(r"^include:\s*(\S+)", text, re.M)
        path = Path(path).parent / inc.group(1) if inc and "dataset_path" not in found else None
    return found.get("dataset_path", "?"), found.get("dataset_name")


def run_tasks(model: torch.nn.Module, tokenizer, names: list[str], *, batch_size: int = 8,
              max_length: int = 2048, limit: int | None = None) -> dict[str, dict[str, Any]]:
    """``{task: {acc, acc_stderr, acc_norm, acc_norm_stderr, n, correct}}`` for each task,
    zero-shot; ``correct`` is each item's ``acc`` as packed bits (paired comparisons)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    tm = task_manager(names)
    check_tasks(names, tm)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length,
              device=str(next(model.parameters()).device))
    with _quiet_progress_bars():
        # bootstrap_iters=1: lm-eval then gives the closed-form stderr of a mean (no bootstrap)
        out = simple_evaluate(model=lm, tasks=list(names), task_manager=tm, log_samples=True, limit=limit,
                              verbosity="ERROR", bootstrap_iters=1, num_fewshot=0)
    res: dict[str, dict[str, Any]] = {}
    for n in names:
        r, samples = out["results"][n], out["samples"].get(n, [])
        acc = [bool(s.get("acc")) for s in samples]
        res[n] = {k: (float(r[f"{k},none"]) if r.get(f"{k},none") not in (None, "N/A") else None)
                  for k in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")}
        res[n].update(n=len(samples), correct=pack_bits(acc),
                      correct_norm=pack_bits([bool(s.get("acc_norm")) for s in samples]))
    return res
