"""Per-layer quantization sensitivity for mixed precision: ``omega[layer][bits]``, the
expected increase of the calibration loss when that one layer is quantized to ``bits``.

Three measurements, all of the causal-LM next-token loss on the calibration windows:

- ``hawq`` (HAWQ-V2, Dong et al. 2020): ``omega = Tr(H_l) / n_l * ||Q_b(W_l) - W_l||_F^2``,
  the second-order Taylor term of the loss change, with ``H_l`` the block of the loss
  Hessian for layer ``l``'s weight. Its trace is estimated by Hutchinson's method
  (``E[v^T H v]`` for Rademacher ``v``); one Hessian-vector product per probe gives every
  layer's block trace at once, because the cross-layer terms vanish in expectation.
  Cost: ``probes`` double-backward passes, independent of the number of bit widths.
- ``fisher``: the same formula with the trace from the empirical Fisher
  (``Tr(H_l) ~ sum_i E[g_i^2]``, one backward per window, no double backward): cheaper,
  a Gauss-Newton approximation that is exact only at the optimum in expectation.
- ``probe``: output-error probing, the loss change measured directly: each layer alone is
  round-to-nearest quantized to each width and the calibration loss re-measured
  (``layers * widths`` forwards). No Taylor approximation, but the most forwards.
- ``output``: the Fisher-weighted output error of the layer *as GPTQ quantizes it*
  (BRECQ, Li et al. 2021; the K-FAC factorization ``H ~ E[x x^T] (x) E[d d^T]`` with a
  diagonal output factor): ``omega = sum_o E[d_o^2] * (dW A dW^T)_oo`` with ``A = E[x x^T]``
  the layer's input second moment (GPTQ's H), ``d`` the loss gradient at the layer's output
  and ``dW`` the error GPTQ leaves at that width. One forward + backward per window plus one
  GPTQ solve per layer and width; it scores the quantizer actually used and the input
  anisotropy (outlier channels) that the ``||dW||^2`` of ``hawq`` ignores.

For ``hawq``, ``fisher`` and ``probe``, ``Q_b`` is round-to-nearest with the layer's group /
sym settings: HAWQ's perturbation.
GPTQ then compensates part of that error, evenly enough across layers that the ranking
holds (the measured comparison against uniform GPTQ is in ``benchmarks/pipelines_mixed.py``).
A Hutchinson trace can come out negative (the loss Hessian of a trained LM is not positive
definite); it is clamped at 0, i.e. that layer is treated as insensitive.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch
from torch import nn

from harness.calibration import Calibration
from harness.layers.base import linear_weight
from harness.primitives.quant import rtn_fake_quant

Method = Literal["hawq", "fisher", "probe", "output"]


def _subset(calib: Calibration, n: int) -> Calibration:
    """The first ``n`` windows (all of them when there are fewer)."""
    mask = None if calib.attention_mask is None else calib.attention_mask[:n]
    return Calibration(calib.input_ids[:n], mask, split=calib.split, seed=calib.seed)


def _lm_loss(model: nn.Module, batch: dict[str, torch.Tensor], dev: torch.device) -> torch.Tensor:
    ids = batch["input_ids"].to(dev)
    mask = batch.get("attention_mask")
    return model(input_ids=ids, attention_mask=None if mask is None else mask.to(dev), labels=ids,
                 use_cache=False).loss


def _math_attention():
    """Scaled-dot-product attention on the composite (math) backend: the fused CPU/CUDA
    kernels have no double backward, which Hutchinson's Hessian-vector products need."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


@contextlib.contextmanager
def _grads_only_through(model: nn.Module, linears: dict[str, nn.Module]) -> Iterator[list[torch.Tensor]]:
    """Eval mode with autograd on, and gradients only through the linears' weights (the
    other parameters frozen); yields those weights. Restores every flag afterwards."""
    params = list(model.parameters())
    saved = [p.requires_grad for p in params]
    was_training = model.training
    for p in params:
        p.requires_grad_(False)
    weights = [m.weight for m in linears.values()]
    for w in weights:
        w.requires_grad_(True)
    model.eval()
    try:
        with torch.enable_grad():
            yield weights
    finally:
        for p, s in zip(params, saved):
            p.requires_grad_(s)
        model.train(was_training)


def hutchinson_traces(model: nn.Module, linears: dict[str, nn.Module], calib: Calibration, *,
                      probes: int = 16, batch_size: int = 4, seed: int = 0) -> dict[str, float]:
    """Mean diagonal ``Tr(H_l) / n_l`` of the loss Hessian per layer, Hutchinson-estimated
    with ``probes`` Rademacher vectors, each on the next calibration batch (cycled)."""
    gen = torch.Generator().manual_seed(seed)
    batches = list(calib.batches(batch_size))
    with _grads_only_through(model, linears) as weights, _math_attention():
        dev = weights[0].device
        acc = [0.0] * len(weights)
        for k in range(probes):
            loss = _lm_loss(model, batches[k % len(batches)], dev)
            grads = torch.autograd.grad(loss, weights, create_graph=True)
            vs = [(torch.randint(0, 2, w.shape, generator=gen) * 2 - 1).to(w) for w in weights]
            gv = sum((g * v).sum() for g, v in zip(grads, vs))
            hvs = torch.autograd.grad(gv, weights)
            for i, (v, hv) in enumerate(zip(vs, hvs)):
                acc[i] += float((v * hv).sum())
    return {n: acc[i] / probes / weights[i].numel() for i, n in enumerate(linears)}


def fisher_traces(model: nn.Module, linears: dict[str, nn.Module], calib: Calibration) -> dict[str, float]:
    """Mean diagonal of the empirical Fisher per layer, ``mean_i E_window[g_i^2]``."""
    from harness.techniques.pruning.importance import accumulate_grads

    sq = accumulate_grads(model, linears, calib, lambda w, g: g.square())
    return {n: float(t.mean()) for n, t in sq.items()}


def rtn_errors(linears: dict[str, nn.Module], widths: tuple[int, ...], group: int | None, sym: bool
               ) -> dict[str, dict[int, float]]:
    """``||Q_b(W) - W||_F^2`` per layer and width (round-to-nearest, the stored layout)."""
    out: dict[str, dict[int, float]] = {}
    for n, m in linears.items():
        w = linear_weight(m).detach().float()
        out[n] = {b: float((rtn_fake_quant(w, b, group, sym) - w).pow(2).sum()) for b in widths}
    return out


@torch.no_grad()
def probe_losses(model: nn.Module, linears: dict[str, nn.Module], calib: Calibration,
                 widths: tuple[int, ...], group: int | None, sym: bool, *, batch_size: int = 8
                 ) -> dict[str, dict[int, float]]:
    """Measured calibration-loss increase with one layer at a time quantized (RTN) to each
    width, every other layer at full precision."""
    dev = next(model.parameters()).device
    batches = list(calib.batches(batch_size))
    was_training = model.training
    model.eval()

    def loss() -> float:
        tot = sum(float(_lm_loss(model, b, dev)) * b["input_ids"].shape[0] for b in batches)
        return tot / calib.n

    base = loss()
    out: dict[str, dict[int, float]] = {}
    try:
        for n, m in linears.items():
            w = linear_weight(m)  # a view for Conv1D: writes land in the parameter
            orig = w.detach().clone()
            out[n] = {}
            try:
                for b in widths:
                    w.copy_(rtn_fake_quant(orig.float(), b, group, sym).to(orig.dtype))
                    out[n][b] = loss() - base
            finally:
                w.copy_(orig)
    finally:
        model.train(was_training)
    return out


def output_stats(model: nn.Module, linears: dict[str, nn.Module], calib: Calibration, *, batch_size: int = 4
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per layer: ``A = E[x x^T]`` over input tokens ``[in, in]`` and ``E[d_o^2]`` per output
    channel ``[out]`` (``d``: gradient of the calibration loss at the layer's output, up to
    a factor common to all layers), from one forward + backward per calibration batch."""
    A: dict[str, torch.Tensor] = {}
    G: dict[str, torch.Tensor] = {}
    count = {n: 0 for n in linears}

    def fwd(name: str):
        def hook(_mod, args, out):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            A[name] = x.t() @ x if name not in A else A[name].add_(x.t() @ x)
            count[name] += x.shape[0]

            def grad_hook(grad: torch.Tensor) -> None:
                sq = grad.detach().reshape(-1, grad.shape[-1]).float().pow(2).sum(0)
                G[name] = sq if name not in G else G[name].add_(sq)

            if out.requires_grad:
                out.register_hook(grad_hook)
        return hook

    with _grads_only_through(model, linears) as weights:
        handles = [m.register_forward_hook(fwd(n)) for n, m in linears.items()]
        dev = weights[0].device
        try:
            for b in calib.batches(batch_size):
                torch.autograd.grad(_lm_loss(model, b, dev), weights)
        finally:
            for h in handles:
                h.remove()
    return ({n: A[n] / max(count[n], 1) for n in linears},
            {n: G[n] / max(count[n], 1) if n in G else torch.zeros(linear_weight(linears[n]).shape[0])
             for n in linears})


def gptq_output_errors(linears: dict[str, nn.Module], A: dict[str, torch.Tensor], widths: tuple[int, ...],
                       group: int | None, sym: bool, *, damp: float = 0.01, act_order: bool = False,
                       damp_per_width: float = 0.0, tokens: int = 0) -> dict[str, dict[int, torch.Tensor]]:
    """Per layer and width: ``diag(dW A dW^T)`` ``[out]``, the mean squared error GPTQ leaves
    on each output channel (``dW``: weight minus its GPTQ-quantized value; damping as
    ``gptq`` applies it for ``tokens`` calibration tokens)."""
    from harness.primitives.quant import dequantize_groupwise
    from harness.techniques.quantization.gptq import effective_damp, gptq_quantize

    out: dict[str, dict[int, torch.Tensor]] = {}
    for n, m in linears.items():
        w = linear_weight(m).detach().float()
        out[n] = {}
        d_n = effective_damp(damp, damp_per_width, w.shape[1], tokens)
        for b in widths:
            codes, scales, zeros = gptq_quantize(w, A[n], b, group, sym, damp=d_n, act_order=act_order)
            d = w - dequantize_groupwise(codes, scales, zeros, b, group)
            out[n][b] = ((d @ A[n].to(d)) * d).sum(1)
    return out


def layer_sensitivity(model: nn.Module, linears: dict[str, nn.Module], calib: Calibration,
                      widths: tuple[int, ...], *, method: Method = "output", group: int | None = None,
                      sym: bool = True, probes: int = 16, seed: int = 0, damp: float = 0.01,
                      damp_per_width: float = 0.0, act_order: bool = False) -> dict[str, dict[int, float]]:
    """``omega[layer][bits]``: the estimated loss increase of quantizing that layer alone
    (see the module docstring for the four methods). ``probes``: Hutchinson vectors for
    ``hawq``, calibration windows used for the others; ``damp`` / ``damp_per_width`` /
    ``act_order``: GPTQ's, for ``output``."""
    if method == "output":
        sub = _subset(calib, probes)
        A, G = output_stats(model, linears, sub)
        tokens = int(sub.input_ids.numel() if sub.attention_mask is None else sub.attention_mask.sum())
        errs = gptq_output_errors(linears, A, widths, group, sym, damp=damp, act_order=act_order,
                                  damp_per_width=damp_per_width, tokens=tokens)
        return {n: {b: float((G[n].to(e) * e).sum()) for b, e in errs[n].items()} for n in linears}
    if method == "probe":
        return probe_losses(model, linears, _subset(calib, probes), widths, group, sym)
    if method == "fisher":
        traces = fisher_traces(model, linears, _subset(calib, probes))
    elif method == "hawq":
        traces = hutchinson_traces(model, linears, calib, probes=probes, seed=seed)
    else:
        raise ValueError(f"method={method!r} is not a sensitivity method; choose one of hawq, fisher, probe, output")
    errs = rtn_errors(linears, widths, group, sym)
    return {n: {b: max(traces[n], 0.0) * e for b, e in errs[n].items()} for n in linears}


__all__ = ["Method", "fisher_traces", "gptq_output_errors", "hutchinson_traces", "layer_sensitivity", "output_stats",
           "probe_losses", "rtn_errors"]
