"""What a pipeline may chain, and how two compressions of one layer are stored together.

Order rules (``check_order``, at parse time, before any model is loaded): a stage that
would undo an earlier one is a one-line ``SpecError`` naming both stages and the fix --
dense fine-tuning or distillation after quantization (use ``qat``), pruning or low-rank
factoring after quantization, a second quantizer over the same layers (give disjoint
``targets``), low-rank and unstructured sparsity on the same layers, training that would
refill pruned zeros (``recover`` keeps them), and a combination with no compact stacked
format (sparse + codebook, or sparse codes that would not be smaller than dense codes).

Stacked formats (``Stacker``, at run time): before a quantizer that produces QuantLinear
(``rtn``, ``gptq``, ``mixed``), a packed ``SparseLinear`` is unpacked to a dense Linear
whose mask is remembered, and a ``LowRankLinear`` becomes two plain Linears (A, then B);
after the quantizer, they are stored as ``SparseQuantLinear`` (kept codes + bitmask) and
``LowRankQuantLinear`` (packed A and B). A layer whose sparse codes would not be smaller
than its dense codes keeps the QuantLinear, with a note saying so.
"""
from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from harness.calibration import find_blocks, in_targets, restrict_targets, target_linears
from harness.config import SpecError
from harness.layers.base import CompressedModule, is_linear, linear_weight, set_module
from harness.layers.lowrank import LowRankLinear
from harness.layers.quant import QuantLinear
from harness.layers.sparse import SparseLinear
from harness.layers.stacked import LowRankQuantLinear, SparseQuantLinear, saves_over_dense
from harness.techniques.base import Technique

# Quantizers whose output is a plain QuantLinear (no input scales): the ones that stack.
STACKABLE = ("rtn", "gptq", "mixed")


def roles(t: Technique) -> set[str]:
    """What a stage does to the model, for the order rules: quant (packs linears), embed
    (packs the embedding), sparse (unstructured pruning), lowrank (factors), structural
    (shapes shrink), trains (fine-tunes weights), runtime (KV cache only)."""
    if t.name == "none":
        return set()
    if t.name == "kv-cache":
        return {"runtime"}
    if t.name == "quant-embed":
        return {"embed"}
    r: set[str] = set()
    if t.family == "quantization" or (t.storage == "packed" and t.family in ("lowrank", "sharing")):
        r.add("quant")
    if t.family == "lowrank":
        r.add("lowrank")
    if t.family == "pruning" and t.storage in ("mask", "packed"):
        r.add("sparse")
    if t.storage == "structural" and t.family != "lowrank":
        r.add("structural")
    if t.needs_grad and "sparse" not in r:  # taylor/obd take gradients but do not train
        r.add("trains")
    return r


def _removes_blocks(t: Technique) -> bool:
    return t.name == "drop-layers" or bool(getattr(t.config, "layers", 0)) and t.name in ("student", "distill")


def _pair_error(i: int, si: str, ti: Technique, j: int, sj: str, tj: Technique, both_targeted: bool) -> str | None:
    """Why stage j may not follow stage i (None: it may). When both stages have ``targets``
    they may touch different layers: the same-layer rules are then checked at run time
    (a stage finds no plain linear left, or a stacked conversion refuses the layer)."""
    ri, rj = roles(ti), roles(tj)
    a, b = f"stage {i} ({si})", f"stage {j} ({sj})"
    if ri & {"quant", "embed"} and "trains" in rj and tj.name != "qat":
        return (f"{b} fine-tunes weights after {a} quantized them: packed codes cannot train, so the fine-tune "
                f"would fit the rest around frozen codes; put it before the quantizer, or use qat (quantization-"
                f"aware training) instead")
    if "sparse" in ri and "trains" in rj and tj.name != "recover":
        return (f"{b} trains every weight after {a} pruned them, so the pruned zeros would grow back; use "
                f"recover (fine-tunes with the mask kept) after unstructured pruning")
    if tj.name == "distill" and _removes_blocks(ti) and "hidden" in str(getattr(tj.config, "loss", "")):
        return (f"{b}: loss=hidden after {a} removed blocks: which teacher block each student block came from "
                f"is lost; use loss=logits, or remove the blocks in the distill stage itself (distill:layers=K)")
    if "embed" in ri and "embed" in rj:
        return f"{b} quantizes the embedding {a} already quantized"
    if both_targeted:
        return None
    if "quant" in ri and ("sparse" in rj or ("structural" in rj and tj.name != "drop-layers")):
        return f"{b} prunes after {a} quantized: pruning packed codes would undo the quantization; prune first"
    if "quant" in ri and "lowrank" in rj:
        return (f"{b} factors layers after {a} quantized them (a factorization of dequantized weights undoes the "
                f"packing); factor first, then quantize (low-rank + quantized is a stacked format)")
    if "quant" in ri and "quant" in rj:
        return (f"{b} would quantize the layers {a} already quantized; to mix formats give the two stages "
                f"disjoint 'targets' (a recipe file)")
    if ("sparse" in ri and "lowrank" in rj) or ("lowrank" in ri and "sparse" in rj):
        return (f"{b} after {a}: sparse + low-rank has no compact stacked format (a factorization refills the "
                f"zeros; pruning factors leaves nothing to pack); use one of them, or quantize on top of either")
    if ("sparse" in ri and "sparse" in rj) or ("lowrank" in ri and "lowrank" in rj):
        return f"{b} repeats what {a} did to the same layers; use one stage at the final setting"
    if "sparse" in ri and "quant" in rj:
        return _sparse_quant_error(a, ti, b, tj)
    if "lowrank" in ri and "quant" in rj and tj.name not in STACKABLE:
        return (f"{b} after {a}: low-rank + {tj.name} has no stacked format (stacked low-rank + quantized "
                f"stores QuantLinear factors: use {' or '.join(STACKABLE)})")
    if ri & {"sparse", "lowrank"} and "structural" in rj and tj.name != "drop-layers":
        return f"{b} changes layer shapes after {a} compressed those layers; put the structural stage first"
    return None


def _sparse_quant_error(a: str, ti: Technique, b: str, tj: Technique) -> str | None:
    if tj.name not in STACKABLE:
        return (f"{b} after {a}: sparse + {tj.name} has no compact stacked format (its layers would store the "
                f"pruned zeros as codes); use {' or '.join(STACKABLE)} (sparse + quantized: kept codes + bitmask)")
    s, bits = getattr(ti.config, "target", None), getattr(tj.config, "bits", None)
    if isinstance(s, float) and isinstance(bits, int):
        per_weight = 1 + (1 - s) * bits  # 1-bit mask + the kept codes
        if per_weight >= bits:
            return (f"{b} after {a}: at sparsity {s:g} a {bits}-bit sparse layout stores {per_weight:.2f} bits per "
                    f"weight (1-bit mask + kept codes), no less than {bits} bits of dense codes, so the pruning "
                    f"would save nothing; prune more than {1 / bits:.0%} or drop the pruning stage")
    return None


def check_order(stages: list[tuple[str, Technique, tuple[str, ...]]]) -> None:
    """One-line SpecError at the first stage that would undo or cannot stack on an earlier one."""
    for j, (sj, tj, gj) in enumerate(stages):
        for i, (si, ti, gi) in enumerate(stages[:j]):
            err = _pair_error(i + 1, si, ti, j + 1, sj, tj, bool(gi) and bool(gj))
            if err:
                raise SpecError(err)


class _Factors(nn.Module):
    """A LowRankLinear as two plain linears (in -> rank -> out) for a quantizer to see."""

    def __init__(self, lr: LowRankLinear) -> None:
        super().__init__()
        dev, dt = lr.A.device, lr.A.dtype
        self.a = nn.Linear(lr.in_features, lr.rank, bias=False, device=dev, dtype=dt)
        self.b = nn.Linear(lr.rank, lr.out_features, bias=lr.bias is not None, device=dev, dtype=dt)
        with torch.no_grad():
            self.a.weight.copy_(lr.A)
            self.b.weight.copy_(lr.B)
            if lr.bias is not None:
                self.b.bias.copy_(lr.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


def _weight(m: nn.Module) -> torch.Tensor | None:
    return None if isinstance(m, CompressedModule) else (linear_weight(m) if isinstance(m, nn.Linear) else m.weight)


def snapshot(model: nn.Module) -> dict[str, tuple]:
    """Every linear / compressed layer by name: weak references to the module and its
    weight (ids can be reused once an object dies; a dead reference never matches) and the
    weight's in-place version counter and storage address (``torch.nn.utils.prune`` swaps
    ``.data``, which the version counter does not see)."""
    out: dict[str, tuple] = {}
    for n, m in model.named_modules():
        if isinstance(m, CompressedModule) or is_linear(m):
            w = _weight(m)
            out[n] = (weakref.ref(m), None if w is None else weakref.ref(w),
                      None if w is None else (w._version, w.data_ptr()))
    return out


def unchanged(key: tuple | None, m: nn.Module | None) -> bool:
    """True when ``m`` is the module ``key`` (from ``snapshot``) saw, with the same weight, unmodified."""
    if key is None or m is None or key[0]() is not m:
        return False
    w = _weight(m)
    return (key[1] is None and w is None) or (key[1] is not None and key[1]() is w
                                              and (w._version, w.data_ptr()) == key[2])


@dataclass
class Stacker:
    """Run-time state of one pipeline run: masks of layers pruned into dense tensors
    (format=dense), and the layers unpacked or split for the current quantizer."""

    masks: dict[int, tuple[nn.Module, torch.Tensor]] = field(default_factory=dict)
    _sparse: dict[str, tuple[torch.Tensor, bool]] = field(default_factory=dict)  # name -> (mask, was packed)
    _factored: list[str] = field(default_factory=list)

    def scope(self, model: nn.Module, targets: tuple[str, ...]) -> Iterable[tuple[str, nn.Module]]:
        prefix, _ = find_blocks(model)
        for n, m in list(model.named_modules()):
            if n.startswith(prefix + ".") and (not targets or in_targets(n, targets)):
                yield n, m

    def before(self, model: nn.Module, label: str, tech: Technique, targets: tuple[str, ...]) -> tuple[str, ...]:
        """Checks and conversions before a stage runs; returns extra target names (the
        factors of split low-rank layers) the stage must also reach."""
        if targets:
            names = [n for n, m in model.named_modules() if is_linear(m) or isinstance(m, CompressedModule)]
            for p in targets:
                if not any(in_targets(n, (p,)) for n in names):
                    raise SpecError(f"{label}: targets pattern {p!r} matches no layer of this model (layers look "
                                    f"like {', '.join(names[:3])}, ...)")
        extra: list[str] = []
        if tech.name in STACKABLE:
            for n, m in self.scope(model, targets):
                if isinstance(m, SparseLinear):
                    self._sparse[n] = (m.keep_mask(), True)
                    lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None,
                                    device=m.values.device, dtype=m.values.dtype)
                    with torch.no_grad():
                        lin.weight.copy_(m.dense_weight())
                        if m.bias is not None:
                            lin.bias.copy_(m.bias)
                    set_module(model, n, lin)
                elif is_linear(m) and id(m) in self.masks:
                    self._sparse[n] = (self.masks.pop(id(m))[1], False)
                elif isinstance(m, LowRankLinear):
                    set_module(model, n, _Factors(m))
                    self._factored.append(n)
                    extra += [f"{n}.a", f"{n}.b"]
        if roles(tech) & {"quant", "sparse", "lowrank"}:
            with restrict_targets(model, targets + tuple(extra) if targets else ()):
                if not target_linears(model):
                    where = f" in targets {list(targets)}" if targets else ""
                    raise SpecError(f"{label} finds no plain linear layer left to compress{where}: earlier stages "
                                    f"already compressed them")
        return tuple(extra)

    def after(self, model: nn.Module, label: str, tech: Technique, before: dict[str, tuple]) -> list[str]:
        """Stack what the stage produced on what it was given; remember new masks. Notes."""
        notes: list[str] = []
        for n, (mask, packed) in self._sparse.items():
            m = model.get_submodule(n)
            if isinstance(m, QuantLinear) and m.input_scale is None:
                nnz = int(mask.sum())
                if saves_over_dense(m.out_features, m.in_features, nnz, m.bits, m.group, m.sym):
                    set_module(model, n, SparseQuantLinear.from_quant(m, mask))
                else:
                    notes.append(f"{n}: sparse + quantized would not be smaller than dense codes at density "
                                 f"{nnz / mask.numel():.2f}; stored as dense codes")
            elif is_linear(m):  # the quantizer left it alone: put it back as it was
                if packed:
                    set_module(model, n, SparseLinear.from_dense(linear_weight(m).detach(), m.bias, mask=mask))
                else:
                    self.masks[id(m)] = (m, mask)
            else:
                raise SpecError(f"{label} turned sparse layer {n} into {type(m).__name__}, which has no sparse + "
                                f"quantized format")
        for n in self._factored:
            f = model.get_submodule(n)
            a, b = f.a, f.b
            if isinstance(a, QuantLinear) and isinstance(b, QuantLinear):
                set_module(model, n, LowRankQuantLinear.from_quant(a, b, b.bias))
            elif isinstance(a, nn.Linear) and isinstance(b, nn.Linear):
                set_module(model, n, LowRankLinear.from_factors(a.weight.detach(), b.weight.detach(), b.bias))
            else:
                raise SpecError(f"{label} turned the factors of {n} into {type(a).__name__}/{type(b).__name__}; "
                                f"low-rank + quantized stores QuantLinear factors only")
        if self._sparse or self._factored:
            kinds = [k for k, on in (("sparse + quantized", self._sparse), ("low-rank + quantized", self._factored))
                     if on]
            notes.append(f"stacked formats: {' and '.join(kinds)} ({len(self._sparse) + len(self._factored)} layers)")
        self._sparse, self._factored = {}, []
        if "sparse" in roles(tech):  # pruned into dense tensors (format=dense): keep the masks
            for _n, m in self.scope(model, ()):
                if type(m) is nn.Linear and bool((m.weight == 0).any()):
                    self.masks[id(m)] = (m, m.weight.detach() != 0)
        return notes


def check_untouched(model: nn.Module, before: dict[str, tuple], targets: tuple[str, ...], label: str) -> None:
    """SpecError when a stage with ``targets`` changed a layer outside them."""
    now = dict(model.named_modules())
    for n, key in before.items():
        if not in_targets(n, targets) and not unchanged(key, now.get(n)):
            raise SpecError(f"{label} does not honour targets: it changed {n}, which no pattern of "
                            f"{list(targets)} matches; only techniques that walk the target linears "
                            f"(quantizers, unstructured pruning, low-rank) take targets")


__all__ = ["STACKABLE", "Stacker", "check_order", "check_untouched", "roles", "snapshot", "unchanged"]
