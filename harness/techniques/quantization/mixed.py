"""Per-layer mixed-precision GPTQ under a bits-per-parameter budget
(``mixed:bits=2-8,budget=4.0[,method=output|hawq|fisher|probe]``).

1. Sensitivity: ``omega[layer][b]``, the estimated calibration-loss increase of quantizing
   that layer alone to ``b`` bits (``sensitivity.py``). Default ``output``: the output
   error GPTQ itself leaves at that width, weighted by the loss gradient's energy at the
   layer's output (BRECQ's Fisher-weighted reconstruction, a K-FAC factorization of the
   Hessian). Why not HAWQ-V2 (``hawq``: Hessian trace times ``||Q(W) - W||^2``) by default:
   it scores round-to-nearest error as if every input direction mattered equally, while the
   layers are GPTQ-quantized and LLM inputs are strongly anisotropic; it needs a double
   backward per probe (measured ~85 s per probe on a 135M model on 2 CPU cores against one
   backward per window here); and on harness-tiny both give the same perplexity within
   noise (docs/results/pipelines.md). Both, plus ``fisher`` and ``probe``, stay selectable.
2. Allocation (HAWQ-V3's integer linear program): choose one width per layer minimizing
   ``sum omega[l][b_l]`` subject to ``sum stored_bits(l, b_l) <= budget * sum n_l``. It is a
   multiple-choice knapsack, solved exactly by ``scipy.optimize.milp`` (HiGHS); the result
   is re-checked in integers and never exceeds the budget.
3. Quantization: GPTQ (``gptq.gptq_quantize``, the same block-sequential pass as ``gptq``)
   at each layer's width.

The budget means exactly what ``size.bits_per_param`` measures: stored bits of the block
linears' packed codes, float16 scales and (asymmetric) zero codes, divided by their dense
weight count (``stored_bits`` below is that count per layer; biases excluded on both sides).
Embeddings and the output head stay in full precision, as for ``gptq``.

The chosen map is in the notes (``bits map: {...}``) and the compress records' extra
(``Applied.extra["bits_map"]``), can be read back from any (reloaded) model with
``bits_map(model)``, and ``mixed_recipe(map)`` turns it into the recipe format of
``harness eval --technique recipe.yaml`` (one ``gptq`` stage per width; ``recipe_out=PATH``
writes it).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from harness.calibration import target_linears
from harness.config import SpecError, check
from harness.layers.base import linear_shape, linear_weight
from harness.paths import atomic_write
from harness.primitives.packing import packed_width
from harness.primitives.quant import QUANT_BITS, n_groups
from harness.techniques.base import Applied, Technique, from_config, register
from harness.techniques.quantization.common import calibration_notes, check_config, to_quant_linear
from harness.techniques.quantization.gptq import effective_damp, gptq_quantize, shared_inputs
from harness.techniques.quantization.sensitivity import layer_sensitivity
from harness.techniques.quantization.sequential import quantize_sequential


def parse_widths(bits: str) -> tuple[int, ...]:
    """``"2-8"`` -> the supported widths in that range, (2, 3, 4, 8); ``"4"`` -> (4,)."""
    allowed = ", ".join(map(str, QUANT_BITS))
    lo_s, dash, hi_s = str(bits).partition("-")
    try:
        lo, hi = int(lo_s), int(hi_s if dash else lo_s)
    except ValueError:
        raise SpecError(f"bits={bits!r} is not a range; expected LO-HI such as 2-8 (widths: {allowed})") from None
    if lo > hi:
        raise SpecError(f"bits={bits!r}: low {lo} is above high {hi}; expected LO-HI with LO <= HI, e.g. 2-8")
    widths = tuple(b for b in QUANT_BITS if lo <= b <= hi)
    if lo < min(QUANT_BITS) or hi > max(QUANT_BITS) or not widths:
        raise SpecError(f"bits={bits!r} is outside the supported widths {allowed}; expected LO-HI such as 2-8")
    return widths


@dataclass(frozen=True)
class MixedConfig:
    """bits: LO-HI range of widths to choose from (2, 3, 4, 8 inside it); budget: average
    stored bits per weight over the block linears, scales included (= size.bits_per_param);
    method: sensitivity measurement (output, hawq, fisher, probe); probes: Hutchinson vectors
    (hawq) or calibration windows (the others); group / sym / damp / act_order /
    damp_per_width: as for gptq (the same solver and damping rule); recipe_out: also write
    the chosen map as a recipe YAML there."""

    bits: str = "2-8"
    budget: float = 4.0
    method: Literal["hawq", "fisher", "probe", "output"] = "output"
    probes: int = 16
    group: int | None = None
    sym: bool = True
    damp: float = 0.01
    act_order: bool = False
    damp_per_width: float = 0.1
    recipe_out: str | None = None

    def __post_init__(self) -> None:
        widths = parse_widths(self.bits)
        lo, hi = widths[0], widths[-1]
        check(lo < self.budget <= hi or (lo == hi and self.budget > lo),
              f"budget={self.budget} bits/param is outside bits={self.bits}: it must be above {lo} (scales are "
              f"stored too) and at most {hi}")
        check(self.probes >= 1, f"probes={self.probes} must be >= 1")
        check(self.group is None or self.group >= 1,
              f"group={self.group} must be a positive integer or none (per output channel)")
        check(0 <= self.damp < 1, f"damp={self.damp} is outside [0, 1)")
        check(0 <= self.damp_per_width <= 10, f"damp_per_width={self.damp_per_width} is outside [0, 10]")
        check(self.recipe_out is None or bool(str(self.recipe_out).strip()), "recipe_out must be a file path")

    @property
    def widths(self) -> tuple[int, ...]:
        return parse_widths(self.bits)


def stored_bits(out_features: int, in_features: int, bits: int, group: int | None, sym: bool) -> int:
    """Bits a QuantLinear stores for its weight: packed codes, float16 scales and (asym)
    uint8 zeros, exactly what ``measure.size.weight_storage`` counts (bias excluded)."""
    ng = n_groups(in_features, group)
    return out_features * (packed_width(in_features, bits) * 8 + ng * 16 + (0 if sym else ng * 8))


def allocate(costs: Mapping[str, Mapping[int, int]], omega: Mapping[str, Mapping[int, float]],
             budget_bits: float) -> dict[str, int]:
    """The width per layer minimizing ``sum omega[l][b]`` with ``sum costs[l][b] <= budget_bits``
    (exact, by integer programming). Raises SpecError when even the cheapest widths overflow."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    names = list(costs)
    cheapest = sum(min(costs[n].values()) for n in names)
    if cheapest > budget_bits:
        raise SpecError(f"the budget of {budget_bits:.0f} stored bits is below the {cheapest} bits the cheapest "
                        "widths need (scales included)")
    keys = [(n, b) for n in names for b in sorted(costs[n])]
    scale = max(abs(omega[n][b]) for n, b in keys) or 1.0
    c = np.array([omega[n][b] / scale for n, b in keys])
    norm = max(budget_bits, 1.0)
    cost = np.array([costs[n][b] / norm for n, b in keys])
    one = np.array([[1.0 if k[0] == n else 0.0 for k in keys] for n in names])
    slack = 0.0
    for _ in range(5):  # tighten by the solver's tolerance until the integer check passes
        res = milp(c, integrality=np.ones(len(keys)), bounds=Bounds(0, 1),
                   constraints=[LinearConstraint(one, 1, 1), LinearConstraint(cost[None, :], -np.inf, 1 - slack)],
                   options={"mip_rel_gap": 0})
        if res.x is None:
            raise SpecError(f"no width assignment meets the budget of {budget_bits:.0f} stored bits")
        pick = {n: b for (n, b), x in zip(keys, res.x) if x > 0.5}
        used = sum(costs[n][pick[n]] for n in names)
        if len(pick) == len(names) and used <= budget_bits:
            return _spend_leftover(pick, costs, omega, budget_bits)
        slack = slack * 10 if slack else 1e-9
    raise SpecError(f"the allocation could not be brought within the budget of {budget_bits:.0f} bits")


def _spend_leftover(pick: dict[str, int], costs: Mapping[str, Mapping[int, int]],
                    omega: Mapping[str, Mapping[int, float]], budget_bits: float) -> dict[str, int]:
    """Raise a layer's width where that costs no sensitivity and still fits (ties, e.g. all-zero
    omegas, are resolved towards more bits, never at the objective's expense)."""
    used = sum(costs[n][b] for n, b in pick.items())
    for n in pick:
        for b in sorted(costs[n], reverse=True):
            extra = costs[n][b] - costs[n][pick[n]]
            if b > pick[n] and omega[n][b] <= omega[n][pick[n]] and used + extra <= budget_bits:
                used += extra
                pick[n] = b
                break
    return pick


def bits_map(model: nn.Module) -> dict[str, int]:
    """The width of every quantized (QuantLinear) layer of ``model``, by full module name."""
    from harness.layers.quant import QuantLinear

    return {n: int(m.bits) for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def mixed_recipe(bits: Mapping[str, int], *, group: int | None = None, sym: bool = True) -> dict[str, Any]:
    """The recipe (shared pipeline format) for a width map: one ``gptq`` stage per width,
    widest first, its ``targets`` the exact layer names."""
    stages = []
    for b in sorted(set(bits.values()), reverse=True):
        opts: dict[str, Any] = {"bits": int(b)}
        if group is not None:
            opts["group"] = int(group)
        if not sym:
            opts["sym"] = False
        stages.append({"technique": "gptq", "options": opts, "targets": [n for n, v in bits.items() if v == b]})
    return {"stages": stages}


def recipe_bits(recipe: Mapping[str, Any]) -> dict[str, int]:
    """The width map a ``mixed_recipe`` encodes (the inverse of ``mixed_recipe``)."""
    out: dict[str, int] = {}
    for i, st in enumerate(recipe.get("stages") or []):
        if st.get("technique") != "gptq" or "bits" not in (st.get("options") or {}):
            raise SpecError(f"recipe stage {i} is not a gptq stage with bits; mixed recipes hold only those")
        for name in st.get("targets") or []:
            if name in out:
                raise SpecError(f"layer {name!r} is targeted by two stages of the recipe")
            out[name] = int(st["options"]["bits"])
    return out


def write_recipe(path: str | Path, recipe: Mapping[str, Any]) -> Path:
    """Write ``recipe`` as YAML, atomically (never a half-written file)."""
    import yaml

    p = Path(path).expanduser()
    atomic_write(p, yaml.safe_dump(dict(recipe), sort_keys=False))
    return p


@register
class MixedGPTQ(Technique):
    name = "mixed"
    family = "quantization"
    config_cls = MixedConfig
    storage = "packed"
    needs_calibration = True
    needs_grad = from_config(lambda cfg: cfg.method != "probe")
    model_kinds = ("causal-lm",)
    suite_specs = ("mixed:bits=2-4,budget=3.0",)
    description = "per-layer mixed-precision GPTQ: widths from measured sensitivity under a bits/param budget (ILP)"

    def apply(self, model: nn.Module, calibration=None) -> Applied:
        cfg = self.config
        widths = cfg.widths
        linears = target_linears(model)
        if not linears:
            raise SpecError("mixed: the model has no linear layers inside its transformer blocks")
        check_config(linears, widths[0], cfg.group)
        costs = {n: {b: stored_bits(*linear_shape(m), b, cfg.group, cfg.sym) for b in widths}
                 for n, m in linears.items()}
        n_weights = sum(o * i for o, i in map(linear_shape, linears.values()))
        cheapest = sum(min(c.values()) for c in costs.values()) / n_weights
        if cheapest > cfg.budget:
            raise SpecError(f"budget={cfg.budget} bits/param is below the {cheapest:.4f} this model needs with every "
                            f"layer at {widths[0]} bits (scales included); raise it or use a larger group")
        omega = {n: {widths[0]: 0.0} for n in linears} if len(widths) == 1 else layer_sensitivity(
            model, linears, calibration, widths, method=cfg.method, group=cfg.group, sym=cfg.sym, probes=cfg.probes,
            damp=cfg.damp, damp_per_width=cfg.damp_per_width, act_order=cfg.act_order)
        pick = allocate(costs, omega, cfg.budget * n_weights)
        planned = sum(costs[n][b] for n, b in pick.items()) / n_weights
        by_id = {id(m): n for n, m in linears.items()}

        def quantize_group(mods, stats):
            """GPTQ as ``gptq`` runs it (same damping floor; layers sharing one input and one
            width solved as one row-stacked matrix, which gives the same codes)."""
            mine = {n: st for n, st in stats.items() if id(mods[n]) in by_id}
            out = {}
            for names in shared_inputs(mine):
                st = mine[names[0]]
                damp = effective_damp(cfg.damp, cfg.damp_per_width, st.hessian.shape[0], st.n)
                for b in sorted({pick[by_id[id(mods[n])]] for n in names}):
                    same = [n for n in names if pick[by_id[id(mods[n])]] == b]
                    codes = gptq_quantize(torch.cat([linear_weight(mods[n]).detach() for n in same]), st.H, b,
                                          cfg.group, cfg.sym, damp=damp, act_order=cfg.act_order)
                    r0 = 0
                    for n in same:
                        r1 = r0 + linear_weight(mods[n]).shape[0]
                        part = tuple(None if t is None else t[r0:r1] for t in codes)
                        out[n] = to_quant_linear(mods[n], bits=b, group=cfg.group, sym=cfg.sym, codes=part)
                        r0 = r1
            return out

        with torch.no_grad():
            quantize_sequential(model, calibration, quantize_group)
        counts = ", ".join(f"{b}b x{sum(v == b for v in pick.values())}" for b in widths)
        notes = [f"mixed precision: {cfg.method} sensitivity, budget {cfg.budget} bits/param, planned "
                 f"{planned:.4f} (stored code+scale bits / weights of the block linears, as size.bits_per_param)",
                 f"widths: {counts}", "bits map: " + json.dumps(pick)]
        if cfg.recipe_out:
            path = write_recipe(cfg.recipe_out, mixed_recipe(pick, group=cfg.group, sym=cfg.sym))
            notes.append(f"recipe written to {path}")
        extra = {"bits_map": pick, "method": cfg.method, "budget": cfg.budget, "planned_bits_per_param": planned}
        return Applied(model, calibration_notes(calibration) + notes, extra=extra)


__all__ = ["MixedConfig", "MixedGPTQ", "allocate", "bits_map", "mixed_recipe", "parse_widths", "recipe_bits",
           "stored_bits", "write_recipe"]
