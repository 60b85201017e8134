"""QuantLinear: a weight-only quantized linear layer with really packed storage.

Stored tensors (all registered buffers, so ``state_dict`` is exactly what is shipped):

- ``qweight``  uint8 ``[out, ceil(in*bits/8)]``: integer codes packed along the input dim
  (``harness.primitives.packing`` layout: two 4-bit codes per byte, 3/2-bit dense), exactly
  ``in`` codes per row (no padding codes beyond the packing's last byte).
- ``scales``   float16 ``[out, n_groups]`` with ``n_groups = ceil(in / group)`` (1 for
  ``group=None``): input ``k`` uses group ``k // group``; when ``group`` does not divide
  ``in`` the last group is ragged and covers only the remaining ``in % group`` inputs.
- ``zeros``    uint8 ``[out, n_groups]`` (asymmetric only; symmetric uses z = 2**(bits-1)).
- ``mins``     float16 ``[out, n_groups]`` in place of ``zeros`` when ``mins=True`` (asymmetric):
  ``w = q * s + m``, GGUF Q4_1's block minimum, which no integer zero code holds exactly.
- ``bias``     optional, in the original dtype.
- ``input_scale`` optional float16 ``[in]`` (AWQ): the layer computes ``W_q (x / input_scale)``.

``w = (q - z) * s`` (see ``harness.primitives.quant``). The forward
dequantizes to ``x.dtype`` and runs a dense matmul (torch reference). On CPU the layers
run the kernels chosen in ``harness.layers.exec`` (int4pack/int8pack with bf16 activations,
or a counted dense-bf16 cache); ``use_kernel=False`` or ``HARNESS_CPU_KERNELS=0`` keep the
reference. On CUDA, for 4/8 bits,
it calls ``harness.kernels.quant_matmul(x, qweight, scales, zeros, bits, group, in_features)``
when that module exists (fused dequant-matmul kernels), falling back to torch otherwise
(``quant_matmul`` itself uses the torch reference for what the kernels refuse, e.g. a
ragged last group: ``harness.kernels.why_not`` says why).
The reference alone is *slower* than fp32 on CPU (it dequantizes on every call).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.layers.base import DTYPES, CompressedModule, dtype_name, linear_weight
from harness.layers.exec import cpu_forward
from harness.primitives.codebook import index_bits
from harness.primitives.packing import pack, packed_width, unpack
from harness.primitives.quant import check_quant_args, dequantize_groupwise, expand_groups, n_groups, quantize_groupwise


def _kernel():
    try:
        from harness.kernels import quant_matmul  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001  (kernels not built / triton missing: torch reference)
        return None
    return quant_matmul


class QuantLinear(CompressedModule):
    """Packed group-wise int2/3/4/8 linear layer (drop-in for nn.Linear / GPT-2 Conv1D)."""

    layer_name = "quant_linear"
    use_kernel: bool = True

    def __init__(self, in_features: int, out_features: int, bits: int = 4, group: int | None = 128,
                 sym: bool = True, bias: bool = False, bias_dtype: str = "float32",
                 input_scale: bool = False, mins: bool = False) -> None:
        super().__init__()
        check_quant_args(bits, group, in_features)
        if mins and sym:
            raise ValueError("mins=True (w = q*s + m) is an asymmetric format; it needs sym=False")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.bits, self.group, self.sym = int(bits), (None if group is None else int(group)), bool(sym)
        ng = n_groups(in_features, group)
        self.register_buffer("qweight", torch.zeros(out_features, packed_width(in_features, bits), dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(out_features, ng, dtype=torch.float16))
        for name, kept in (("zeros", not (sym or mins)), ("mins", mins)):
            if kept:
                self.register_buffer(name, torch.zeros(out_features, ng, dtype=torch.float16 if mins else torch.uint8))
            else:
                setattr(self, name, None)
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=DTYPES[bias_dtype]))
        else:
            self.bias = None
        if input_scale:
            self.register_buffer("input_scale", torch.ones(in_features, dtype=torch.float16))
        else:
            self.input_scale = None

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, *, bits: int = 4,
                    group: int | None = 128, sym: bool = True, input_scale: torch.Tensor | None = None,
                    codes: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None) -> QuantLinear:
        """Quantize a dense ``[out, in]`` weight by RTN, or wrap precomputed
        ``codes=(codes, scales, zeros)`` (GPTQ/AWQ/QAT produce their own)."""
        out_f, in_f = weight.shape
        layer = cls(in_f, out_f, bits, group, sym, bias=bias is not None,
                    bias_dtype=dtype_name(bias.dtype) if bias is not None else "float32",
                    input_scale=input_scale is not None)
        q, s, z = codes if codes is not None else quantize_groupwise(weight, bits, group, sym)
        dev = weight.device
        layer.to(dev)
        layer.qweight.copy_(pack(q.to(dev), bits))
        layer.scales.copy_(s.to(torch.float16))
        if not sym:
            assert z is not None, "asymmetric quantization needs zero codes"
            layer.zeros.copy_(z)
        if bias is not None:
            layer.bias.copy_(bias.detach())
        if input_scale is not None:
            layer.input_scale.copy_(input_scale.detach().to(torch.float16))
        return layer

    @classmethod
    def from_linear(cls, module: nn.Module, bits: int = 4, group: int | None = 128, sym: bool = True
                    ) -> QuantLinear:
        """RTN-quantize an nn.Linear or GPT-2 Conv1D."""
        return cls.from_weight(linear_weight(module).detach(), getattr(module, "bias", None),
                               bits=bits, group=group, sym=sym)

    # -- CompressedModule contract --------------------------------------------------------
    def layer_args(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features, "bits": self.bits,
                "group": self.group, "sym": self.sym, "bias": self.bias is not None,
                "bias_dtype": dtype_name(self.bias.dtype) if self.bias is not None else "float32",
                "input_scale": self.input_scale is not None, **({"mins": True} if self.mins is not None else {})}

    def logical_params(self) -> int:
        return self.in_features * self.out_features

    # -- math -------------------------------------------------------------------------------
    def codes(self) -> torch.Tensor:
        return unpack(self.qweight, self.bits, self.in_features)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dense ``[out, in]`` weight this layer applies (before ``input_scale``)."""
        if self.mins is not None:  # q * s + m in float32, two roundings as in gguf's reference
            s, m = (expand_groups(t.float(), self.group, self.in_features) for t in (self.scales, self.mins))
            return (self.codes().float() * s + m).to(dtype)
        return dequantize_groupwise(self.codes(), self.scales, self.zeros, self.bits, self.group, dtype)

    def effective_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Weight acting on the *unscaled* input (input_scale folded in)."""
        w = self.dequantize(torch.float32)
        if self.input_scale is not None:
            w = w / self.input_scale.float()
        return w.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_scale is not None:
            x = x / self.input_scale.to(x.dtype)
        if (y := cpu_forward(self, x)) is not None:  # int4pack/int8pack/dense-bf16 cache (layers.exec)
            return y
        if self.use_kernel and x.is_cuda and self.bits in (4, 8) and self.mins is None:
            k = _kernel()
            if k is not None:
                y = k(x, self.qweight, self.scales, self.zeros, self.bits, self.group, self.in_features)
                return y if self.bias is None else y + self.bias.to(y.dtype)
        w = self.dequantize(x.dtype)
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, bits={self.bits}, group={self.group}, "
                f"sym={self.sym}, bias={self.bias is not None}, input_scale={self.input_scale is not None}"
                + (", mins=True" if self.mins is not None else ""))


class W8A8Linear(CompressedModule):
    """int8 weights (per output channel, symmetric) x int8 activations (dynamic, per token).

    Stored: ``qweight`` int8 ``[out, in]``, ``w_scales`` float16 ``[out]``, optional
    ``smooth`` float16 ``[in]`` (SmoothQuant's migration scales: the layer computes on
    ``x / smooth``), optional ``bias``. The forward quantizes each token's activations to
    int8 (scale = absmax/127) and does an integer matmul: ``torch._int_mm`` on CUDA;
    on CPU the integer products are summed in float32 (exact up to float32 rounding of
    the int32 sums), because torch's CPU ``_int_mm`` is several times *slower* than an
    fp32 matmul. So this layer shows W8A8 *accuracy* and storage on CPU, not speed.
    """

    layer_name = "w8a8_linear"

    def __init__(self, in_features: int, out_features: int, bias: bool = False, bias_dtype: str = "float32",
                 smooth: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("w_scales", torch.ones(out_features, dtype=torch.float16))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=DTYPES[bias_dtype]))
        else:
            self.bias = None
        if smooth:
            self.register_buffer("smooth", torch.ones(in_features, dtype=torch.float16))
        else:
            self.smooth = None

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None = None,
                    smooth: torch.Tensor | None = None) -> W8A8Linear:
        """Quantize ``weight`` [out, in] (already multiplied by ``smooth`` if given)."""
        out_f, in_f = weight.shape
        layer = cls(in_f, out_f, bias is not None, dtype_name(bias.dtype) if bias is not None else "float32",
                    smooth is not None).to(weight.device)
        w = weight.detach().float()
        scale = (w.abs().amax(1) / 127).clamp(min=1e-8).to(torch.float16)
        layer.w_scales.copy_(scale)
        layer.qweight.copy_(torch.round(w / scale.float()[:, None]).clamp(-127, 127).to(torch.int8))
        if bias is not None:
            layer.bias.copy_(bias.detach())
        if smooth is not None:
            layer.smooth.copy_(smooth.detach().to(torch.float16))
        return layer

    def layer_args(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None,
                "bias_dtype": dtype_name(self.bias.dtype) if self.bias is not None else "float32",
                "smooth": self.smooth is not None}

    def logical_params(self) -> int:
        return self.in_features * self.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (y := cpu_forward(self, x)) is not None:  # int8pack kernel on CPU (layers.exec)
            return y
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).float()
        if self.smooth is not None:
            x2 = x2 / self.smooth.float()
        a = (x2.abs().amax(1, keepdim=True) / 127).clamp(min=1e-8)
        xq = torch.round(x2 / a).clamp(-127, 127)
        if x.is_cuda and xq.shape[0] > 16 and self.in_features % 8 == 0 and self.out_features % 8 == 0:
            acc = torch._int_mm(xq.to(torch.int8), self.qweight.t()).float()
        else:
            acc = xq @ self.qweight.float().t()
        y = acc * a * self.w_scales.float()
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)


class CodebookLinear(CompressedModule):
    """Non-uniform weight-only layer: packed indices into a codebook (NF4, k-means, weight
    clustering).

    Stored: ``qweight`` uint8 packed indices ``[out, ceil(in*bits/8)]``, ``codebook``
    float16 ``[entries]`` (one per layer; ``entries`` defaults to ``2**bits``, fewer when a
    clustering asks for, say, 10 levels packed at 4 bits), optional ``scales`` float16
    ``[out, n_groups]`` (per-group absmax normalisation, as in NF4; ``n_groups = ceil(in /
    group)``, the last group ragged when ``group`` does not divide ``in``), optional ``bias``.
    ``w = codebook[idx] * scale``. The forward dequantizes (torch reference).
    """

    layer_name = "codebook_linear"

    def __init__(self, in_features: int, out_features: int, bits: int = 4, group: int | None = None,
                 scaled: bool = True, bias: bool = False, bias_dtype: str = "float32",
                 entries: int | None = None) -> None:
        super().__init__()
        check_quant_args(bits, group, in_features)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.bits, self.group = int(bits), (None if group is None else int(group))
        self.entries = 2 ** self.bits if entries is None else int(entries)
        if not 2 <= self.entries <= 2 ** self.bits:
            raise ValueError(f"a {self.bits}-bit codebook holds 2..{2 ** self.bits} entries, not {self.entries}")
        self.register_buffer("qweight", torch.zeros(out_features, packed_width(in_features, bits), dtype=torch.uint8))
        self.register_buffer("codebook", torch.zeros(self.entries, dtype=torch.float16))
        if scaled:
            self.register_buffer("scales", torch.ones(out_features, n_groups(in_features, group),
                                                      dtype=torch.float16))
        else:
            self.scales = None
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=DTYPES[bias_dtype]))
        else:
            self.bias = None

    @classmethod
    def from_codes(cls, idx: torch.Tensor, codebook: torch.Tensor, scales: torch.Tensor | None, bits: int,
                   group: int | None, bias: torch.Tensor | None = None) -> CodebookLinear:
        """Wrap indices ``[out, in]`` into ``codebook`` (``2**bits`` entries or fewer)."""
        out_f, in_f = idx.shape
        layer = cls(in_f, out_f, bits, group, scales is not None, bias is not None,
                    dtype_name(bias.dtype) if bias is not None else "float32",
                    entries=int(codebook.numel())).to(idx.device)
        layer.qweight.copy_(pack(idx, bits))
        layer.codebook.copy_(codebook.to(torch.float16))
        if scales is not None:
            layer.scales.copy_(scales.to(torch.float16))
        if bias is not None:
            layer.bias.copy_(bias.detach())
        return layer

    def layer_args(self) -> dict[str, Any]:
        args = {"in_features": self.in_features, "out_features": self.out_features, "bits": self.bits,
                "group": self.group, "scaled": self.scales is not None, "bias": self.bias is not None,
                "bias_dtype": dtype_name(self.bias.dtype) if self.bias is not None else "float32"}
        if self.entries != 2 ** self.bits:
            args["entries"] = self.entries
        return args

    def logical_params(self) -> int:
        return self.in_features * self.out_features

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        w = self.codebook.float()[unpack(self.qweight, self.bits, self.in_features).long()]
        if self.scales is not None:
            w = w * expand_groups(self.scales.float(), self.group, self.in_features)
        return w.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (y := cpu_forward(self, x)) is not None:  # dense-bf16 cache on CPU (layers.exec)
            return y
        return F.linear(x, self.dequantize(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


class ClusteredLinear(CodebookLinear):
    """Loader for checkpoints saved with the retired ``clustered_linear`` layer (weight
    clustering before issue 12): builds the equivalent ``CodebookLinear`` (``clusters``
    unscaled levels, indices packed at ``index_bits(clusters)``) and reads the old tensor
    name ``indices`` as ``qweight``. Nothing is saved under this name any more."""

    layer_name = "clustered_linear"

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> CodebookLinear:
        clusters = int(args["clusters"])
        layer = CodebookLinear(args["in_features"], args["out_features"], bits=index_bits(clusters), group=None,
                               scaled=False, bias=bool(args.get("bias", False)),
                               bias_dtype=args.get("bias_dtype", "float32"), entries=clusters)
        layer._register_load_state_dict_pre_hook(_rename_indices)
        return layer


def _rename_indices(state_dict, prefix, *_args) -> None:
    if prefix + "indices" in state_dict and prefix + "qweight" not in state_dict:
        state_dict[prefix + "qweight"] = state_dict.pop(prefix + "indices")


__all__ = ["ClusteredLinear", "CodebookLinear", "QuantLinear", "W8A8Linear"]
