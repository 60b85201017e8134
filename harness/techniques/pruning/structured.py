"""Structured pruning: FFN neurons, attention head groups and whole layers, physically removed.

Weights are sliced into smaller Linear layers (the dims really shrink), the HF config is
updated where it can express the new shape (``intermediate_size``/``ffn_dim``/``n_inner``,
Llama's head counts with an explicit ``head_dim``, ``num_hidden_layers``), and modules
that keep a head count in an attribute get it updated and listed in ``harness_attrs`` so
``harness.checkpoint`` restores it on load. Heads are removed by whole KV groups (a KV
head with the query heads that share it), so GQA ratios stay intact. Dropped layers'
successors get their ``layer_idx`` renumbered so the KV cache stays consistent.

Importance (the same number of units is removed in every layer):
- neurons: ``||W_out[:, j]|| * ||X_j||`` (Wanda-style, from calibration) or, without
  calibration, ``||W_out[:, j]|| * ||W_in[j, :]||``;
- head groups: the same, summed over the group's output-projection columns (with
  calibration) or ``||W_o[:, g]|| * ||W_v[g]||``;
- layers: Block Influence (ShortGPT: 1 - cosine(block input, block output)) on the
  calibration windows, or on a seeded random-token probe without calibration.

Families: Llama/Qwen/Mistral (q/k/v/o, gate/up/down), OPT, GPT-2 (Conv1D), BERT.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from harness.calibration import Calibration, collect_linear_stats, find_blocks
from harness.config import SpecError, check
from harness.layers.base import linear_weight, set_module
from harness.techniques.base import Technique, register


@dataclass(frozen=True)
class FractionConfig:
    """fraction: share of the units (neurons / KV head groups) removed in every layer."""

    fraction: float = 0.25

    def __post_init__(self) -> None:
        check(0 < self.fraction < 1, f"fraction={self.fraction} is outside (0, 1)")


@dataclass(frozen=True)
class DropLayersConfig:
    """count: number of whole transformer blocks removed."""

    count: int = 1

    def __post_init__(self) -> None:
        check(self.count >= 1, f"count={self.count} must be >= 1")


# ---------------------------------------------------------------- family layouts
@dataclass
class FFN:
    ins: list[str]  # linears whose output rows are the neurons
    out: str        # linear whose input columns are the neurons
    config_key: str


@dataclass
class Attn:
    module: str
    q: str
    k: str | None   # None: fused GPT-2 c_attn in ``q``
    v: str | None
    o: str
    head_dim: int
    attrs: tuple[str, ...] = field(default_factory=tuple)


def _has(block: nn.Module, path: str) -> bool:
    try:
        block.get_submodule(path)
        return True
    except AttributeError:
        return False


def ffn_of(block: nn.Module) -> FFN:
    if _has(block, "mlp.gate_proj"):
        return FFN(["mlp.gate_proj", "mlp.up_proj"], "mlp.down_proj", "intermediate_size")
    if _has(block, "fc1"):
        return FFN(["fc1"], "fc2", "ffn_dim")
    if _has(block, "mlp.c_fc"):
        return FFN(["mlp.c_fc"], "mlp.c_proj", "n_inner")
    if _has(block, "intermediate.dense"):
        return FFN(["intermediate.dense"], "output.dense", "intermediate_size")
    raise SpecError(f"structured pruning does not know the FFN layout of {type(block).__name__} "
                    "(supported: Llama/Qwen/Mistral, OPT, GPT-2, BERT)")


def attn_of(block: nn.Module) -> Attn:
    if _has(block, "self_attn.o_proj"):
        a = block.self_attn
        return Attn("self_attn", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                    int(a.head_dim))
    if _has(block, "self_attn.out_proj"):
        return Attn("self_attn", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                    int(block.self_attn.head_dim), ("num_heads",))
    if _has(block, "attn.c_attn"):
        return Attn("attn", "attn.c_attn", None, None, "attn.c_proj", int(block.attn.head_dim),
                    ("num_heads", "split_size"))
    if _has(block, "attention.self.query"):
        return Attn("attention.self", "attention.self.query", "attention.self.key", "attention.self.value",
                    "attention.output.dense", int(block.attention.self.attention_head_size),
                    ("num_attention_heads", "all_head_size"))
    raise SpecError(f"structured pruning does not know the attention layout of {type(block).__name__} "
                    "(supported: Llama/Qwen/Mistral, OPT, GPT-2, BERT)")


def slice_linear(mod: nn.Module, out_idx: torch.Tensor | None = None, in_idx: torch.Tensor | None = None, *,
                 keep_type: bool = True) -> nn.Module:
    """A smaller copy keeping rows ``out_idx`` / columns ``in_idx`` ([out, in] layout).
    GPT-2 Conv1D stays Conv1D when ``keep_type`` (its shape is then in the config),
    else it becomes an equivalent nn.Linear (what the checkpoint rebuilds for shapes
    the config cannot express)."""
    W = linear_weight(mod).detach()
    b = getattr(mod, "bias", None)
    if out_idx is not None:
        W = W[out_idx]
        b = None if b is None else b.detach()[out_idx]
    if in_idx is not None:
        W = W[:, in_idx]
    W = W.contiguous()
    if type(mod).__name__ == "Conv1D" and keep_type:
        new = type(mod)(W.shape[0], W.shape[1])
        new = new.to(device=W.device, dtype=W.dtype)
        with torch.no_grad():
            new.weight.copy_(W.t())
            new.bias.copy_(b if b is not None else torch.zeros_like(new.bias))
        return new
    new = nn.Linear(W.shape[1], W.shape[0], bias=b is not None, device=W.device, dtype=W.dtype)
    with torch.no_grad():
        new.weight.copy_(W)
        if b is not None:
            new.bias.copy_(b)
    return new


def _heads(block: nn.Module, a: Attn) -> tuple[int, int]:
    """(query heads, KV heads) of one block."""
    q = linear_weight(block.get_submodule(a.q)).shape[0]
    if a.k is None:  # fused q|k|v, multi-head
        n = q // 3 // a.head_dim
        return n, n
    return q // a.head_dim, linear_weight(block.get_submodule(a.k)).shape[0] // a.head_dim


def _span(groups: torch.Tensor, width: int) -> torch.Tensor:
    return (groups[:, None] * width + torch.arange(width)[None, :]).reshape(-1)


# ---------------------------------------------------------------- removal primitives
def remove_ffn_neurons(model: nn.Module, keep: dict[int, torch.Tensor]) -> nn.Module:
    """Keep only neurons ``keep[i]`` (sorted indices) of block i's FFN."""
    _, blocks = find_blocks(model)
    sizes = set()
    for i, idx in keep.items():
        block = blocks[i]
        f = ffn_of(block)
        idx = idx.sort().values
        for path in f.ins:
            set_module(block, path, slice_linear(block.get_submodule(path), out_idx=idx))
        set_module(block, f.out, slice_linear(block.get_submodule(f.out), in_idx=idx))
        sizes.add(int(idx.numel()))
    if len(sizes) == 1 and len(keep) == len(blocks):
        setattr(model.config, ffn_of(blocks[0]).config_key, sizes.pop())
    return model


def remove_head_groups(model: nn.Module, keep: dict[int, torch.Tensor]) -> nn.Module:
    """Keep only KV groups ``keep[i]`` of block i (a group = one KV head and the query
    heads that share it; for multi-head attention a group is one head)."""
    _, blocks = find_blocks(model)
    counts = set()
    for i, groups in keep.items():
        block = blocks[i]
        a = attn_of(block)
        groups = groups.sort().values
        nq, nkv = _heads(block, a)
        rep, hd = nq // nkv, a.head_dim
        q_rows = _span(groups, rep * hd)
        kv_rows = _span(groups, hd)
        if a.k is None:  # GPT-2 fused c_attn = [q | k | v], each nq*hd wide
            e = nq * hd
            rows = torch.cat([q_rows, e + kv_rows, 2 * e + kv_rows])
            set_module(block, a.q, slice_linear(block.get_submodule(a.q), out_idx=rows, keep_type=False))
        else:
            set_module(block, a.q, slice_linear(block.get_submodule(a.q), out_idx=q_rows))
            set_module(block, a.k, slice_linear(block.get_submodule(a.k), out_idx=kv_rows))
            set_module(block, a.v, slice_linear(block.get_submodule(a.v), out_idx=kv_rows))
        set_module(block, a.o, slice_linear(block.get_submodule(a.o), in_idx=q_rows, keep_type=False))
        att = block.get_submodule(a.module)
        new_q = int(groups.numel()) * rep
        values = {"num_heads": new_q, "num_attention_heads": new_q, "split_size": new_q * hd,
                  "all_head_size": new_q * hd}
        if a.attrs:
            att.harness_attrs = {k: values[k] for k in a.attrs}
            for k, v in att.harness_attrs.items():
                setattr(att, k, v)
        counts.add((new_q, int(groups.numel()), hd))
    cfg = model.config
    if (len(counts) == 1 and len(keep) == len(blocks) and cfg.model_type in _LLAMA_LIKE):
        nq, nkv, hd = counts.pop()
        cfg.head_dim = hd
        cfg.num_attention_heads, cfg.num_key_value_heads = nq, nkv
    return model


_LLAMA_LIKE = {"llama", "mistral", "qwen2", "qwen3"}


def remove_layers(model: nn.Module, drop: list[int]) -> nn.Module:
    """Delete blocks ``drop`` and renumber the remaining blocks' ``layer_idx``."""
    prefix, blocks = find_blocks(model)
    n = len(blocks)
    drop_set = set(drop)
    if len(drop_set) >= n:
        raise SpecError(f"dropping {len(drop_set)} layers would remove every one of the {n} layers; at most {n - 1}")
    kept = nn.ModuleList([b for i, b in enumerate(blocks) if i not in drop_set])
    set_module(model, prefix, kept)
    for new_i, block in enumerate(kept):
        for m in block.modules():
            if isinstance(getattr(m, "layer_idx", None), int):
                m.layer_idx = new_i
    cfg = model.config
    cfg.num_hidden_layers = len(kept)
    if isinstance(getattr(cfg, "layer_types", None), list):
        cfg.layer_types = [t for i, t in enumerate(cfg.layer_types) if i not in drop_set]
    return model


# ---------------------------------------------------------------- importance
def _run(model: nn.Module, calib: Calibration, batch_size: int = 8) -> None:
    dev = next(model.parameters()).device
    for b in calib.batches(batch_size):
        kw = {k: v.to(dev) for k, v in b.items()}
        try:
            model(**kw, use_cache=False)
        except TypeError:
            model(**kw)


def probe(model: nn.Module, n: int = 4, seq_len: int = 64) -> Calibration:
    """Seeded random-token windows, for layer scores when no calibration is given."""
    vocab = int(getattr(model.config, "vocab_size", 1000))
    return Calibration(torch.randint(0, vocab, (n, seq_len), generator=torch.Generator().manual_seed(0)),
                       split="random-probe")


def _out_stats(model: nn.Module, paths: list[str], calib: Calibration | None) -> dict[str, torch.Tensor] | None:
    """sq_norm of the inputs of block-relative linears ``paths`` in every block (one pass)."""
    if calib is None:
        return None
    prefix, blocks = find_blocks(model)
    mods = {f"{i}.{p}": blocks[i].get_submodule(p) for i in range(len(blocks)) for p in paths}
    with torch.no_grad():
        stats = collect_linear_stats(mods, lambda: _run(model, calib), hessian=False)
    return {k: s.sq_norm for k, s in stats.items()}


def neuron_scores(model: nn.Module, calib: Calibration | None) -> list[torch.Tensor]:
    _, blocks = find_blocks(model)
    f = ffn_of(blocks[0])
    sq = _out_stats(model, [f.out], calib)
    out = []
    for i, block in enumerate(blocks):
        w_out = linear_weight(block.get_submodule(f.out)).detach().float()
        col = w_out.norm(dim=0)
        if sq is not None:
            out.append(col * sq[f"{i}.{f.out}"].to(col.device).sqrt())
        else:
            ins = torch.stack([linear_weight(block.get_submodule(p)).detach().float().norm(dim=1) for p in f.ins])
            out.append(col * ins.mean(0))
    return out


def group_scores(model: nn.Module, calib: Calibration | None) -> list[torch.Tensor]:
    _, blocks = find_blocks(model)
    a0 = attn_of(blocks[0])
    sq = _out_stats(model, [a0.o], calib)
    out = []
    for i, block in enumerate(blocks):
        a = attn_of(block)
        nq, nkv = _heads(block, a)
        w_o = linear_weight(block.get_submodule(a.o)).detach().float()
        if sq is not None:
            per_col = w_o.square().sum(0) * sq[f"{i}.{a.o}"].to(w_o.device)
            out.append(per_col.view(nkv, -1).sum(1).sqrt())
        else:
            wq = linear_weight(block.get_submodule(a.q)).detach().float()
            if a.k is None:
                wv = wq[2 * nq * a.head_dim:]
            else:
                wv = linear_weight(block.get_submodule(a.v)).detach().float()
            out.append(w_o.square().sum(0).view(nkv, -1).sum(1).sqrt() * wv.square().sum(1).view(nkv, -1).sum(1).sqrt())
    return out


@torch.no_grad()
def block_influence(model: nn.Module, calib: Calibration) -> torch.Tensor:
    """ShortGPT's Block Influence per block: 1 - mean cosine(input, output) over tokens."""
    _, blocks = find_blocks(model)
    sums = torch.zeros(len(blocks), dtype=torch.float64)
    count = torch.zeros(len(blocks), dtype=torch.float64)
    handles = []

    def make(i: int):
        def hook(_m, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, (tuple, list)) else output
            cos = torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1)
            sums[i] += cos.double().sum().cpu()
            count[i] += cos.numel()
        return hook

    for i, b in enumerate(blocks):
        handles.append(b.register_forward_hook(make(i), with_kwargs=True))
    try:
        _run(model, calib)
    finally:
        for h in handles:
            h.remove()
    return 1 - sums / count.clamp(min=1)


def _removal_count(fraction: float, total: int, what: str) -> int:
    k = int(round(fraction * total))
    if k >= total:
        raise SpecError(f"fraction={fraction} would remove every one of the {total} {what} per layer; "
                        f"use a fraction below {(total - 0.5) / total:.3g}")
    if k == 0:
        raise SpecError(f"fraction={fraction} removes no {what} (only {total} per layer); "
                        f"use at least {0.5 / total:.3g}")
    return k


# ---------------------------------------------------------------- techniques
class _Structured(Technique):
    family = "pruning"
    storage = "structural"
    needs_calibration = False
    used_calibration = False

    def notes(self) -> list[str]:
        how = "calibration activations" if self.used_calibration else "weights only (no calibration given)"
        return [f"weights physically removed (smaller shapes, config updated); importance from {how}"]


@register
class PruneNeurons(_Structured):
    name = "prune-neurons"
    config_cls = FractionConfig
    suite_specs = ("prune-neurons:fraction=0.25",)
    description = "remove FFN neurons (rows of up/gate, columns of down) in every layer"

    def apply(self, model: nn.Module, calibration=None) -> nn.Module:
        self.used_calibration = calibration is not None
        scores = neuron_scores(model, calibration)
        k = _removal_count(self.config.fraction, scores[0].numel(), "FFN neurons")
        keep = {i: torch.topk(s, s.numel() - k).indices.cpu() for i, s in enumerate(scores)}
        return remove_ffn_neurons(model, keep)


@register
class PruneHeads(_Structured):
    name = "prune-heads"
    config_cls = FractionConfig
    suite_specs = ("prune-heads:fraction=0.25",)
    description = "remove attention heads by whole KV groups (GQA-aware) in every layer"

    def apply(self, model: nn.Module, calibration=None) -> nn.Module:
        self.used_calibration = calibration is not None
        scores = group_scores(model, calibration)
        k = _removal_count(self.config.fraction, scores[0].numel(), "KV head groups")
        keep = {i: torch.topk(s, s.numel() - k).indices.cpu() for i, s in enumerate(scores)}
        return remove_head_groups(model, keep)


@register
class DropLayers(_Structured):
    name = "drop-layers"
    config_cls = DropLayersConfig
    suite_specs = ("drop-layers:count=1",)
    description = "remove whole transformer blocks with the lowest Block Influence (ShortGPT)"

    def apply(self, model: nn.Module, calibration=None) -> nn.Module:
        self.used_calibration = calibration is not None
        _, blocks = find_blocks(model)
        n = len(blocks)
        if self.config.count >= n:
            raise SpecError(f"drop-layers:count={self.config.count} would remove every one of the {n} layers; "
                            f"at most {n - 1}")
        bi = block_influence(model, calibration if calibration is not None else probe(model))
        drop = torch.topk(bi, self.config.count, largest=False).indices.tolist()
        self.dropped = sorted(drop)
        return remove_layers(model, drop)

    def notes(self) -> list[str]:
        return super().notes() + [f"dropped blocks {getattr(self, 'dropped', [])}"]
