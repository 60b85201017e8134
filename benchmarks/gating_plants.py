"""Test-only pytest plugin for ``bench_gating.py``: plants a known regression in one technique.

Loaded with ``-p gating_plants`` (this folder on PYTHONPATH) and driven by environment:

- ``HARNESS_PLANT_TECHNIQUE``: technique name whose compressed model is altered (e.g. ``rtn``);
- ``HARNESS_PLANT_SLOW``: fraction, e.g. ``0.15``: every forward of that model takes 15% more
  wall time (the forward is timed and then padded by a spin on ``perf_counter``, so the
  work is real and the slow-down is proportional at every shape);
- ``HARNESS_PLANT_PPL``: a fraction, e.g. ``0.02``: at every position the probability of the
  token that actually follows in the input is multiplied by 1 / (1 + f) and the removed mass
  is spread over the other tokens in proportion, so every window's perplexity rises by
  exactly the factor (1 + f). (Mixing with the uniform distribution is not a reliable
  plant: on a weak model it *lowers* perplexity, as smoothing does.)

- ``HARNESS_PLANTS``: several at once, ``rtn:slow=0.15;magnitude:ppl=0.002`` (technique:kind=fraction,
  ``;``-separated), for ``bench_ab.py``'s jobs that plant on two techniques of one run.

The uncompressed reference is never altered.
"""
from __future__ import annotations

import math
import os
import time

import torch

import harness.evaluation as evaluation

_original = evaluation.compress_model


def _slow(model: torch.nn.Module, frac: float) -> None:
    state: dict[str, float] = {}

    def pre(_m, _args, _kw):
        state["t0"] = time.perf_counter()

    def post(_m, _args, _kw, out):
        end = state["t0"] + (time.perf_counter() - state["t0"]) * (1 + frac)
        while time.perf_counter() < end:
            pass
        return out

    model.register_forward_pre_hook(pre, with_kwargs=True)
    model.register_forward_hook(post, with_kwargs=True)


def _penalize(model: torch.nn.Module, frac: float) -> None:
    delta = math.log1p(frac)

    def post(_m, _args, kw, out):
        ids = kw.get("input_ids")
        logits = out.logits
        if ids is None or logits.shape[1] != ids.shape[1] or ids.shape[1] < 2:
            return out  # decode steps / logits_to_keep: no next token to penalize
        lp = torch.log_softmax(logits.float(), -1)
        tgt = ids[:, 1:].to(lp.device).unsqueeze(-1)
        head = lp[:, :-1]
        lp_t = head.gather(-1, tgt)
        p_t = lp_t.exp().clamp(max=1 - 1e-6)
        scale = torch.log1p(-p_t * math.exp(-delta)) - torch.log1p(-p_t)  # the others share the mass
        head = (head + scale).scatter(-1, tgt, lp_t - delta)
        out.logits = torch.cat([head, lp[:, -1:]], 1).to(logits.dtype)
        return out

    model.register_forward_hook(post, with_kwargs=True)


def plants() -> dict[str, dict[str, float]]:
    """technique -> {"slow": f, "ppl": f} from HARNESS_PLANTS and the single-technique variables."""
    out: dict[str, dict[str, float]] = {}
    for item in filter(None, os.environ.get("HARNESS_PLANTS", "").split(";")):
        tech, _, what = item.partition(":")
        kind, _, frac = what.partition("=")
        out.setdefault(tech.strip(), {})[kind.strip()] = float(frac)
    target = os.environ.get("HARNESS_PLANT_TECHNIQUE", "")
    for kind, var in (("slow", "HARNESS_PLANT_SLOW"), ("ppl", "HARNESS_PLANT_PPL")):
        if target and os.environ.get(var):
            out.setdefault(target, {})[kind] = float(os.environ[var])
    return out


def _planted(lm, spec, *args, **kwargs):
    result = _original(lm, spec, *args, **kwargs)
    model = getattr(result, "model", None)
    plan = plants().get(getattr(result, "technique", ""), {})
    if plan and model is not None and model is not lm.model:
        if plan.get("slow"):
            _slow(model, plan["slow"])
        if plan.get("ppl"):
            _penalize(model, plan["ppl"])
    return result


evaluation.compress_model = _planted
