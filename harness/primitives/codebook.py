"""Non-uniform codebooks: NF4 levels, nearest-entry assignment, 1-D k-means and per-group
absmax scales (used by ``CodebookLinear`` and the nf4 / kmeans / cluster techniques).

A codebook is a 1-D float tensor of levels, stored in float16 by the layers (so every
function here returns float16-representable levels). Indices into it are packed like
any other low-bit code (``harness.primitives.packing``).
"""
from __future__ import annotations

import math
from typing import Literal

import torch

from harness.config import SpecError
from harness.primitives.packing import SUPPORTED_BITS
from harness.primitives.quant import expand_groups, group_width, n_groups, pad_to_groups

NF4_LEVELS = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0])


def index_bits(entries: int) -> int:
    """Packed width per index for a codebook of ``entries`` levels (2..256): the smallest
    of the packable widths 2/3/4/8 with ``2**bits >= entries``."""
    if not 2 <= entries <= 256:
        raise SpecError(f"clusters={entries} is not allowed; choose 2 <= clusters <= 256")
    need = max(1, math.ceil(math.log2(entries)))
    return next(b for b in SUPPORTED_BITS if b >= need)


def assign_sorted(values: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest entry of an *ascending* codebook for each value (exact in 1-D:
    bucketize on the midpoints between neighbouring levels)."""
    return torch.bucketize(values, (codebook[1:] + codebook[:-1]) / 2)


def nearest(values: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook entry for each value (codebook need not be sorted)."""
    sorted_cb, order = torch.sort(codebook.float())
    return order[assign_sorted(values.float().contiguous(), sorted_cb)]


def kmeans_1d(x: torch.Tensor, k: int, iters: int = 25, *, init_sample: Literal["strided", "random"] = "strided",
              max_sample: int = 1 << 16, early_stop: bool = True) -> torch.Tensor:
    """Lloyd's k-means of the values of ``x``: ``k`` ascending float16-representable levels.

    Deterministic: the levels start at the ``(i + 0.5) / k`` quantiles of at most
    ``max_sample`` values (evenly strided, or a seeded random subset), then each round
    assigns every value to its nearest level and moves each level to its values' mean (an
    empty level stays). ``early_stop`` ends the rounds once the levels stop moving
    (``allclose``); without it all ``iters`` rounds run. The two settings in use are the
    ``kmeans`` quantizer's (the defaults) and the ``cluster`` technique's (random 100 000
    values, no early stop); both reproduce their earlier results bit for bit.
    """
    x = x.detach().flatten().float()
    n = x.numel()
    sample = x
    if n > max_sample:
        if init_sample == "strided":
            sample = x[torch.linspace(0, n - 1, max_sample).long()]
        else:
            sample = x[torch.randperm(n, generator=torch.Generator().manual_seed(0))[:max_sample]]
    cb = torch.quantile(sample, (torch.arange(k, dtype=torch.float32) + 0.5) / k)
    for _ in range(iters):
        idx = nearest(x, cb)
        sums = torch.zeros(k).index_add_(0, idx, x)
        counts = torch.zeros(k).index_add_(0, idx, torch.ones_like(x))
        new = torch.where(counts > 0, sums / counts.clamp(min=1), cb)
        if early_stop and torch.allclose(new, cb):
            break
        cb = new
    return torch.sort(cb.to(torch.float16).float()).values  # the stored precision


def group_absmax(w: torch.Tensor, group: int | None) -> torch.Tensor:
    """float16-exact absmax scale per (row, group): [out, ceil(in / group)]. A ragged last
    group is zero-padded, which does not change its absmax."""
    out_f, in_f = w.shape
    g, ng = group_width(in_f, group), n_groups(in_f, group)
    s = pad_to_groups(w.float().abs(), group).reshape(out_f, ng, g).amax(-1).clamp(min=1e-6)
    r = s.to(torch.float16)
    up = torch.nextafter(r, torch.full_like(r, float("inf")))
    return torch.where(r.float() < s, up, r).float()  # round up so |w/s| <= 1


def codebook_quantize(w: torch.Tensor, bits: int, group: int | None, codebook: torch.Tensor | None,
                      scaled: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(indices uint8 [out, in], codebook [2**bits], scales [out, ng] or None).

    ``codebook=None`` learns one by ``kmeans_1d`` on the (absmax-normalised when
    ``scaled``) weights; a codebook shorter than ``2**bits`` is padded with its last level."""
    w = w.detach().float()
    scales = group_absmax(w, group) if scaled else None
    wn = w / expand_groups(scales, group, w.shape[1]) if scaled else w
    if codebook is None:
        codebook = kmeans_1d(wn, min(2 ** bits, wn.numel()))
    codebook = codebook.to(torch.float16).float()
    if codebook.numel() < 2 ** bits:
        codebook = torch.cat([codebook, codebook[-1:].expand(2 ** bits - codebook.numel())])
    return nearest(wn, codebook).to(torch.uint8), codebook, scales


__all__ = ["NF4_LEVELS", "assign_sorted", "codebook_quantize", "group_absmax", "index_bits", "kmeans_1d",
           "nearest"]
