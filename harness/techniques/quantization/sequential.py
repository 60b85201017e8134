"""Layer-by-layer calibration driver for GPTQ / AWQ / SmoothQuant.

Blocks are processed one at a time (``harness.calibration.for_each_block``: one block's
activations alive at a time). Inside a block, linears are handled in *input groups* in
forward order (``true sequential`` in GPTQ): q/k/v share one input and form a group, then
o_proj, then gate/up, then down. Each group's statistics are collected on inputs produced
by the already-quantized earlier groups of the block, so later layers see the errors of
earlier ones and compensate for them.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from harness.calibration import (
    InputStats,
    block_linears,
    collect_linear_stats,
    find_blocks,
    for_each_block,
    run_until,
)
from harness.layers.base import set_module

GroupFn = Callable[[dict[str, nn.Module], dict[str, InputStats]], dict[str, nn.Module]]


def _input_groups(block: nn.Module, mods: dict[str, nn.Module], feed: Callable[[], None]) -> list[list[str]]:
    """Linears of a block in first-call order, grouped by identical inputs."""
    order: list[str] = []
    probe: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name: str):
        def hook(_m, args):
            if name not in probe:
                order.append(name)
                probe[name] = args[0].detach().reshape(-1, args[0].shape[-1])[:4].clone()
        return hook

    class _Stop(Exception):
        pass

    def stop(*_):
        raise _Stop

    for name, mod in mods.items():
        handles.append(mod.register_forward_pre_hook(make_hook(name)))
    handles.append(block.register_forward_hook(stop))  # one calibration batch is enough
    try:
        feed()
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    order += [n for n in mods if n not in probe]  # never called (unused layers)
    groups: list[list[str]] = []
    for name in order:
        if groups and name in probe and groups[-1][0] in probe and \
                probe[name].shape == probe[groups[-1][0]].shape and torch.equal(probe[name], probe[groups[-1][0]]):
            groups[-1].append(name)
        else:
            groups.append([name])
    return groups


def quantize_sequential(model: nn.Module, calibration, fn: GroupFn, *, hessian: bool = True,
                        keep_samples: int = 0, true_sequential: bool = True) -> list[str]:
    """Call ``fn(group_modules, stats)`` for each input group of each block; ``fn`` returns
    ``{name_in_block: new_module}`` replacements, which are swapped in before the next
    group's statistics are collected. Returns the full names of replaced modules."""
    prefix, _ = find_blocks(model)
    replaced: list[str] = []

    def per_block(i: int, block: nn.Module, feed: Callable[[], None]) -> None:
        mods = block_linears(block)
        groups = _input_groups(block, mods, feed) if true_sequential else [list(mods)]
        for names in groups:
            group = {n: mods[n] for n in names}
            stats = collect_linear_stats(group, feed, hessian=hessian, keep_samples=keep_samples)
            for name, new in fn(group, stats).items():
                parent, _, leaf = name.rpartition(".")
                setattr(block.get_submodule(parent) if parent else block, leaf, new)
                replaced.append(f"{prefix}.{i}.{name}")

    for_each_block(model, calibration, per_block)
    return replaced


@torch.no_grad()
def quantize_head(model: nn.Module, calibration, fn: GroupFn, *, hessian: bool = True,
                  keep_samples: int = 0, batch_size: int = 8) -> list[str]:
    """After the blocks: quantize the output head with ``fn`` on statistics of its real
    inputs, the final hidden states of the already-compressed model over the calibration
    windows (the logits themselves are never computed). Returns the head's name, or []
    when the model has no linear head."""
    from harness.techniques.quantization.common import output_head, untie_head

    found = output_head(model)
    if found is None:
        return []
    name, head = found
    def feed() -> None:
        run_until(model, calibration, head, batch_size=batch_size)

    stats = collect_linear_stats({name: head}, feed, hessian=hessian, keep_samples=keep_samples)
    untie_head(model)
    for full, new in fn({name: head}, stats).items():
        set_module(model, full, new)
    return [name]


__all__ = ["quantize_head", "quantize_sequential"]
