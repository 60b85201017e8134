"""Calibration data and layer-by-layer activation capture.

``get_calibration`` draws named, seeded windows from the training split (never from the
evaluation splits). ``for_each_block`` runs a model's transformer blocks one at a time,
GPTQ-style: the inputs of block 0 are captured once, each block is handed to a callback
(which may collect statistics with ``collect_linear_stats`` and compress the block), and
the block's outputs, computed after compression, become the next block's inputs. Only
one block's activations are alive at a time, and it works for any family whose blocks
sit in one ``nn.ModuleList`` (Llama, Qwen, Mistral, OPT, GPT-2, BERT).
"""
from __future__ import annotations

import contextlib
import contextvars
import fnmatch
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from harness.config import check
from harness.layers.base import CompressedModule, is_linear
from harness.models import data


@dataclass(frozen=True)
class Calibration:
    """Calibration token windows and where they came from (goes into records)."""

    input_ids: torch.Tensor  # [n, seq_len]
    attention_mask: torch.Tensor | None = None
    split: str = "train"  # or "text" for --calibration-text (its sha256 in text_sha256)
    seed: int = 0
    text_sha256: str | None = None
    # --calibration-text FILE: techniques that train draw their stream from it too (data=train)
    text_file: str | None = field(default=None, compare=False)
    # The tokenizer the windows came from: techniques that train draw their token stream
    # with it (``harness.models.train_data.for_technique``). Not part of equality or repr.
    tokenizer: Any = field(default=None, repr=False, compare=False)

    @property
    def n(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    def describe(self) -> dict[str, Any]:
        return {"calibration_split": self.split, "calibration_n": self.n,
                "calibration_seq_len": self.seq_len, "calibration_seed": self.seed,
                **({"calibration_text_sha256": self.text_sha256} if self.text_sha256 else {})}

    def batches(self, batch_size: int = 8) -> Iterable[dict[str, torch.Tensor]]:
        for i in range(0, self.n, batch_size):
            b = {"input_ids": self.input_ids[i: i + batch_size]}
            if self.attention_mask is not None:
                b["attention_mask"] = self.attention_mask[i: i + batch_size]
            yield b


def get_calibration(tokenizer, n: int = 32, seq_len: int = 128, seed: int = 0,
                    split: str = "train", text_file: str | None = None) -> Calibration:
    """``n`` random windows of ``seq_len`` tokens from ``split`` (or from the UTF-8 file
    ``text_file``: calibrate on the user's own domain), reproducible by ``seed``."""
    check(n >= 1, f"calibration n={n} must be >= 1")
    check(seq_len >= 2, f"calibration seq_len={seq_len} must be >= 2")
    sha = None
    if text_file is not None:
        from harness.models.textfile import read_text

        text, sha = read_text(text_file)
        ids, split = data.token_ids(tokenizer, text), "text"
        check(ids.numel() > seq_len + 1, f"calibration text {text_file!r} has {ids.numel()} tokens, too few for "
                                         f"seq_len={seq_len}")
    else:
        ids = data.split_ids(tokenizer, split)
    check(ids.numel() > seq_len + 1, f"split {split!r} has {ids.numel()} tokens, too few for seq_len={seq_len}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seq_len, (n,), generator=g)
    windows = torch.stack([ids[s: s + seq_len] for s in starts.tolist()])
    return Calibration(windows, torch.ones_like(windows), split=split, seed=seed, tokenizer=tokenizer,
                       text_sha256=sha, text_file=text_file)


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList of transformer blocks (the longest list of modules holding linears)."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and any(
                is_linear(m) or isinstance(m, CompressedModule) for m in mod[0].modules()):
            if best is None or len(mod) > len(best[1]):
                best = (name, mod)
    if best is None:
        raise ValueError(f"cannot find transformer blocks in {type(model).__name__}")
    return best


# Layer-name patterns (fnmatch) that restrict what ``target_linears`` and ``block_linears``
# return, set by ``restrict_targets`` (a pipeline stage with ``targets``), with the root model
# that block-relative names are resolved against.
_TARGETS: contextvars.ContextVar[tuple[nn.Module, tuple[str, ...]] | None] = contextvars.ContextVar(
    "harness_targets", default=None)


@contextlib.contextmanager
def restrict_targets(model: nn.Module, patterns: Iterable[str] | None) -> Iterator[None]:
    """Inside this block the model walk (``target_linears``, ``block_linears``) returns only
    layers whose full name in ``model`` matches one of the fnmatch ``patterns``, so any
    technique built on the walk compresses just those layers. None or empty: no restriction."""
    pats = tuple(patterns or ())
    token = _TARGETS.set((model, pats) if pats else None)
    try:
        yield
    finally:
        _TARGETS.reset(token)


def in_targets(name: str, patterns: Iterable[str]) -> bool:
    """True when the full module name matches one of the fnmatch patterns."""
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _restricted(named: dict[str, nn.Module], root: nn.Module | None = None) -> dict[str, nn.Module]:
    """``named`` filtered by the active ``restrict_targets`` (names relative to ``root``;
    None: the names are already full names)."""
    active = _TARGETS.get()
    if active is None:
        return named
    model, pats = active
    if root is None:
        return {n: m for n, m in named.items() if in_targets(n, pats)}
    full = {id(m): n for n, m in model.named_modules()}
    if id(root) not in full:  # not part of the restricted model (e.g. a copy): unrestricted
        return named
    return {n: m for n, m in named.items() if in_targets(full.get(id(m), ""), pats)}


def target_linears(model: nn.Module, *, scope: Literal["blocks", "all"] = "blocks", head: bool = False,
                   also: tuple[type[nn.Module], ...] = ()) -> dict[str, nn.Module]:
    """The layers a technique compresses, by full name, in module order: every Linear /
    Conv1D (plus modules of the types in ``also``, e.g. an already packed SparseLinear)
    inside the transformer blocks (``find_blocks``). Embeddings, poolers and the output
    head stay out, as in GPTQ, AWQ, SparseGPT and Wanda.

    ``scope="all"`` takes every linear of the model instead (torch's quantize_dynamic);
    ``head=True`` adds the output head (``get_output_embeddings``) when it is a linear."""
    def wanted(m: nn.Module) -> bool:
        return is_linear(m) or isinstance(m, also)

    out_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if scope == "all":
        return _restricted({n: m for n, m in model.named_modules() if wanted(m) and (head or m is not out_head)})
    prefix, blocks = find_blocks(model)
    out = {f"{prefix}.{i}.{n}": m for i, b in enumerate(blocks) for n, m in b.named_modules() if wanted(m)}
    if head and out_head is not None and is_linear(out_head):
        out.update({n: m for n, m in model.named_modules() if m is out_head})
    return _restricted(out)


class _Stop(Exception):
    pass


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def run_until(model: nn.Module, calib: Calibration, module: nn.Module,
              on_input: Callable[[tuple, dict], None] | None = None, batch_size: int = 8) -> None:
    """Run ``model`` over the calibration batches, stopping each forward where ``module``
    would start (its input goes to ``on_input(args, kwargs)`` first; forward pre-hooks
    registered on ``module`` earlier see it too). Nothing after ``module`` is computed."""
    def hook(_mod, args, kwargs):
        if on_input is not None:
            on_input(args, kwargs)
        raise _Stop

    h = module.register_forward_pre_hook(hook, with_kwargs=True)
    dev = _device(model)
    try:
        for b in calib.batches(batch_size):
            try:
                model(**{k: v.to(dev) for k, v in b.items()}, use_cache=False)
            except _Stop:
                pass
            except TypeError:  # models without use_cache (BERT)
                try:
                    model(**{k: v.to(dev) for k, v in b.items()})
                except _Stop:
                    pass
    finally:
        h.remove()


def capture_block_inputs(model: nn.Module, calib: Calibration, batch_size: int = 8
                         ) -> list[tuple[tuple, dict]]:
    """(args, kwargs) of the first block for every calibration batch."""
    _, blocks = find_blocks(model)
    captured: list[tuple[tuple, dict]] = []
    run_until(model, calib, blocks[0], lambda args, kwargs: captured.append((args, kwargs)), batch_size)
    return captured


def _hidden(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    kw = dict(kwargs)
    kw["hidden_states"] = hidden
    return args, kw


@torch.no_grad()
def for_each_block(model: nn.Module, calib: Calibration,
                   fn: Callable[[int, nn.Module, Callable[[], None]], None], *,
                   batch_size: int = 8) -> None:
    """Call ``fn(index, block, feed)`` for each block in order; ``feed()`` runs the block
    on its current calibration inputs (hooks placed by ``fn`` see them). After ``fn``
    returns, the (possibly compressed) block's outputs become the next inputs."""
    _, blocks = find_blocks(model)
    inputs = capture_block_inputs(model, calib, batch_size)

    for i, block in enumerate(blocks):
        def feed(block=block, inputs=inputs) -> None:
            for args, kwargs in inputs:
                block(*args, **kwargs)

        fn(i, block, feed)
        inputs = [_with_hidden(a, k, _hidden(block(*a, **k))) for a, k in inputs]


@dataclass
class InputStats:
    """Statistics of a linear layer's inputs accumulated over calibration tokens."""

    hessian: torch.Tensor | None = None  # sum x x^T  [in, in], float32
    sq_norm: torch.Tensor | None = None  # sum x_j^2  [in]
    abs_max: torch.Tensor | None = None  # max |x_j|  [in]
    abs_mean: torch.Tensor | None = None  # mean |x_j| [in]
    n: int = 0  # tokens seen
    samples: list[torch.Tensor] = field(default_factory=list)  # raw inputs when asked

    @property
    def H(self) -> torch.Tensor:
        """Mean second moment E[x x^T] (what GPTQ/SparseGPT call H / 2)."""
        assert self.hessian is not None
        return self.hessian / max(self.n, 1)


def collect_linear_stats(modules: dict[str, nn.Module], feed: Callable[[], None], *,
                         hessian: bool = True, keep_samples: int = 0) -> dict[str, InputStats]:
    """Run ``feed`` with hooks on each linear in ``modules`` and return their input stats."""
    stats = {name: InputStats() for name in modules}
    handles = []

    def make_hook(name: str):
        def hook(_mod, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            s = stats[name]
            if hessian:
                s.hessian = x.t() @ x if s.hessian is None else s.hessian.add_(x.t() @ x)
            sq = (x * x).sum(0)
            s.sq_norm = sq if s.sq_norm is None else s.sq_norm.add_(sq)
            am = x.abs().amax(0)
            s.abs_max = am if s.abs_max is None else torch.maximum(s.abs_max, am)
            asum = x.abs().sum(0)
            s.abs_mean = asum if s.abs_mean is None else s.abs_mean.add_(asum)
            s.n += x.shape[0]
            if keep_samples and sum(t.shape[0] for t in s.samples) < keep_samples:
                s.samples.append(x.cpu())
        return hook

    for name, mod in modules.items():
        if not is_linear(mod):
            raise TypeError(f"{name} is not a linear layer")
        handles.append(mod.register_forward_pre_hook(make_hook(name)))
    try:
        feed()
    finally:
        for h in handles:
            h.remove()
    for s in stats.values():
        if s.abs_mean is not None:
            s.abs_mean = s.abs_mean / max(s.n, 1)
    return stats


def block_linears(block: nn.Module) -> dict[str, nn.Module]:
    """Linear / Conv1D layers inside one block, by their name within the block (only those
    in the active ``restrict_targets``)."""
    return _restricted({n: m for n, m in block.named_modules() if is_linear(m)}, block)
