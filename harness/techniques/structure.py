"""The structure of a transformer, shared by every family that reshapes one (structured
pruning, the distillation student, GQA conversion): where each family keeps its FFN and
attention projections, slicing Linear/Conv1D layers, removing FFN neurons, KV head groups
or whole blocks while keeping the model runnable, cacheable and reloadable, and the
importance scores that choose what to keep.

Weights are sliced into smaller layers (the dims really shrink); the HF config is updated
where it can express the new shape (``intermediate_size``/``ffn_dim``/``n_inner``, Llama's
head counts with an explicit ``head_dim``, ``num_hidden_layers``); modules that keep a
head count in an attribute (OPT ``num_heads``, GPT-2 ``split_size``) get it updated and
listed in ``harness_attrs``, which ``harness.checkpoint`` restores on load. Heads go by
whole KV groups (one KV head with the query heads sharing it), so GQA ratios stay intact.
Blocks after a dropped one get their ``layer_idx`` renumbered for the KV cache.
Families: Llama/Qwen/Mistral (q/k/v/o, gate/up/down), OPT, GPT-2 (Conv1D), BERT.

Scores (``neuron_scores``, ``group_scores``): ``||W_out[:, j]|| * ||X_j||`` (Wanda-style,
from calibration) or, without calibration, ``||W_out[:, j]|| * ||W_in[j, :]||``; head
groups the same, summed over the group's output-projection columns (or
``||W_o[:, g]|| * ||W_v[g]||``). ``angular_distances`` / ``angular_run``: Gromov et al.'s
distance between a block's input and the output ``n`` blocks later.

Family-neutral: imports no technique family (and nothing else from ``harness.techniques``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from harness.calibration import Calibration, collect_linear_stats, find_blocks
from harness.config import SpecError
from harness.layers.base import linear_weight, set_module

# HF model types with Llama's layout and config keys (head_dim, num_key_value_heads).
LLAMA_LIKE = frozenset({"llama", "mistral", "qwen2", "qwen3"})


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


def heads(block: nn.Module, a: Attn) -> tuple[int, int]:
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
        nq, nkv = heads(block, a)
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
    if (len(counts) == 1 and len(keep) == len(blocks) and cfg.model_type in LLAMA_LIKE):
        nq, nkv, hd = counts.pop()
        cfg.head_dim = hd
        cfg.num_attention_heads, cfg.num_key_value_heads = nq, nkv
    return model


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
def forward_batch(model: nn.Module, batch: dict[str, torch.Tensor]) -> None:
    dev = next(model.parameters()).device
    kw = {k: v.to(dev) for k, v in batch.items()}
    try:
        model(**kw, use_cache=False)
    except TypeError:
        model(**kw)


def run_windows(model: nn.Module, calib: Calibration, batch_size: int = 8) -> None:
    for b in calib.batches(batch_size):
        forward_batch(model, b)


def probe(model: nn.Module, n: int = 4, seq_len: int = 64) -> Calibration:
    """Seeded random-token windows, for layer scores when no calibration is given."""
    vocab = int(getattr(model.config, "vocab_size", 1000))
    return Calibration(torch.randint(0, vocab, (n, seq_len), generator=torch.Generator().manual_seed(0)),
                       split="random-probe")


def _out_stats(model: nn.Module, paths: list[str], calib: Calibration | None) -> dict[str, torch.Tensor] | None:
    """sq_norm of the inputs of block-relative linears ``paths`` in every block (one pass)."""
    if calib is None:
        return None
    _, blocks = find_blocks(model)
    mods = {f"{i}.{p}": blocks[i].get_submodule(p) for i in range(len(blocks)) for p in paths}
    with torch.no_grad():
        stats = collect_linear_stats(mods, lambda: run_windows(model, calib), hessian=False)
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
        nq, nkv = heads(block, a)
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
def angular_distances(model: nn.Module, calib: Calibration, n: int) -> torch.Tensor:
    """Gromov et al.'s ``d(x_s, x_{s+n}) = arccos(cos(x_s, x_{s+n})) / pi`` for every start
    ``s``: ``x_s`` is block s's input and ``x_{s+n}`` the output of block ``s+n-1`` (taken by
    hooks, so the last block's output is the residual stream before the final norm), mean
    over every calibration token (the paper takes each sequence's last token; with causal
    attention every position is the last token of its prefix)."""
    _, blocks = find_blocks(model)
    states: list[torch.Tensor | None] = [None] * (len(blocks) + 1)

    def grab(i: int, output: bool):
        def hook(_m, args, kwargs, *out):
            x = (out[0] if output else (args[0] if args else kwargs["hidden_states"]))
            states[i] = (x[0] if isinstance(x, (tuple, list)) else x).detach().float()
        return hook

    handles = [b.register_forward_pre_hook(grab(i, False), with_kwargs=True) for i, b in enumerate(blocks)]
    handles.append(blocks[-1].register_forward_hook(grab(len(blocks), True), with_kwargs=True))
    dist = torch.zeros(len(blocks) - n + 1, dtype=torch.float64)
    tokens = 0
    try:
        for b in calib.batches(8):
            forward_batch(model, b)
            mask = b.get("attention_mask")
            w = (torch.ones(b["input_ids"].shape) if mask is None else mask.float()).double()
            for s in range(dist.numel()):
                cos = torch.nn.functional.cosine_similarity(states[s], states[s + n], dim=-1)
                dist[s] += ((torch.arccos(cos.clamp(-1, 1)) / math.pi).double().cpu() * w).sum()
            tokens += float(w.sum())
    finally:
        for h in handles:
            h.remove()
    return dist / max(tokens, 1.0)


def angular_run(model: nn.Module, calib: Calibration, n: int) -> int:
    """Start of the contiguous run of ``n`` blocks with the smallest angular distance."""
    return int(angular_distances(model, calib, n).argmin())


__all__ = ["LLAMA_LIKE", "Attn", "FFN", "angular_distances", "angular_run", "attn_of", "ffn_of", "forward_batch",
           "group_scores", "heads", "neuron_scores", "probe", "remove_ffn_neurons", "remove_head_groups",
           "remove_layers", "run_windows", "slice_linear"]
