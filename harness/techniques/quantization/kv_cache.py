"""KV-cache quantization during decoding (int8 / int4).

``QuantizedKVCache`` is a transformers ``Cache`` whose layers store keys and values as
packed integer codes: each (token, head) vector of ``head_dim`` values is quantized
asymmetrically with its own float16 scale and uint8 zero (per-token, as KIVI does for
values), packed two per byte at 4 bits. New tokens are quantized once and appended; every
step dequantizes the cache for attention (torch reference: memory saving, no speed-up).
The prompt's first forward attends to its own unquantized keys (as transformers'
QuantizedCache does); every later step sees quantized history.

The ``kv-cache`` technique changes no weights: it makes the model use this cache whenever
it is called with ``use_cache`` and no cache (a forward pre-hook), and returns the cache
factory (``CompressionResult.cache_factory``) for latency measurements. Nothing extra is
saved: the cache is a run-time setting, re-applied after loading.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicLayer

from harness.config import check
from harness.primitives.packing import pack, unpack
from harness.primitives.quant import dequantize_groupwise, quantize_groupwise
from harness.techniques.base import Applied, Technique, register


class QuantizedKVLayer(DynamicLayer):
    """One attention layer's cache, stored as packed codes + float16 scales + uint8 zeros.

    Everything this layer reads is its own state (set in ``lazy_initialization``): the
    base class supplies only the public interface (``is_sliding``, ``get_mask_sizes``),
    so a transformers release that renames DynamicLayer's private attributes cannot
    break it. The dense ``keys``/``values`` of the base class stay empty.
    """

    is_croppable = False

    def __init__(self, bits: int = 8) -> None:
        super().__init__()
        self.bits = bits
        self.length = 0
        self.q: dict[str, list[torch.Tensor]] = {"k": [], "v": []}
        self.kv_dtype: torch.dtype = torch.float32
        self.kv_shape: tuple[int, int, int] = (0, 0, 0)  # batch, heads, head_dim

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.kv_dtype = key_states.dtype
        b, h, _, d = key_states.shape
        self.kv_shape = (b, h, d)
        self.keys = key_states.new_empty(0)
        self.values = value_states.new_empty(0)
        self.is_initialized = True

    def _quant(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, h, s, d = x.shape
        codes, scales, zeros = quantize_groupwise(x.reshape(-1, d), self.bits, None, sym=False)
        # [batch*heads, seq, ...] so new tokens append along dim 1
        return tuple(t.reshape(b * h, s, -1) for t in (pack(codes, self.bits), scales, zeros))

    def _dequant(self, which: str) -> torch.Tensor:
        packed, scales, zeros = (t.reshape(-1, t.shape[-1]) for t in self.q[which])
        b, h, d = self.kv_shape
        w = dequantize_groupwise(unpack(packed, self.bits, d), scales, zeros, self.bits, None, self.kv_dtype)
        return w.reshape(b, h, -1, d)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        first = self.length == 0
        hist = None if first else (self._dequant("k"), self._dequant("v"))
        for which, x in (("k", key_states), ("v", value_states)):
            new = self._quant(x)
            self.q[which] = list(new) if first else [torch.cat([o, n], 1) for o, n in zip(self.q[which], new)]
        self.length += key_states.shape[-2]
        if first:
            return key_states, value_states
        return (torch.cat([hist[0], key_states], -2), torch.cat([hist[1], value_states], -2))

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def reset(self) -> None:
        self.length = 0
        self.q = {"k": [], "v": []}

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("the quantized KV cache cannot be cropped (assisted decoding is not supported)")

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for ts in self.q.values() for t in ts)


class QuantizedKVCache(Cache):
    """A transformers Cache storing K/V quantized to ``bits`` (8 or 4)."""

    def __init__(self, config=None, bits: int = 8) -> None:
        check(bits in (4, 8), f"kv-cache bits={bits} is not supported; choose 8 or 4")
        super().__init__(layer_class_to_replicate=lambda: QuantizedKVLayer(bits))

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)


@dataclass(frozen=True)
class KVCacheConfig:
    """bits: 8 or 4 (per-token asymmetric, one float16 scale + uint8 zero per head vector)."""

    bits: int = 8

    def __post_init__(self) -> None:
        check(self.bits in (4, 8), f"bits={self.bits} is not supported for kv-cache; choose 8 or 4")


@register
class KVCacheQuant(Technique):
    name = "kv-cache"
    family = "quantization"
    config_cls = KVCacheConfig
    storage = "dense"  # weights unchanged; the saving is in run-time cache memory
    model_kinds = ("causal-lm",)
    suite_specs = ("kv-cache:bits=8", "kv-cache:bits=4")
    description = "KV cache stored as packed int8/int4 during decoding (weights unchanged)"

    def apply(self, model: nn.Module, calibration=None) -> Applied:
        bits = self.config.bits

        def factory() -> QuantizedKVCache:
            return QuantizedKVCache(model.config, bits)

        def hook(_mod, args, kwargs):
            if kwargs.get("past_key_values") is None and kwargs.get("use_cache", True) is not False:
                kwargs = dict(kwargs, past_key_values=factory())
            return args, kwargs

        model.register_forward_pre_hook(hook, with_kwargs=True)
        return Applied(model, [("weights unchanged; cache memory saving only during decoding; window perplexity "
                                "does not exercise the cache (use decode fidelity)")], cache_factory=factory)
