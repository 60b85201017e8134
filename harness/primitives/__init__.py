"""Tensor math with no model, layer or technique in it: the lowest layer above the
foundation (``tests/test_architecture.py``).

- ``quant``: group-wise uniform quantization (qparams, quantize/dequantize, fake quant,
  group bookkeeping for ragged last groups).
- ``packing``: bit packing of 2/3/4/8-bit codes along the input dimension.
- ``codebook``: non-uniform codebooks (NF4 levels, nearest entry, 1-D k-means,
  per-group absmax scales).
- ``scales``: activation-aware scale searches (AWQ's channel scale and clipping,
  SmoothQuant's migration factors).

Packed layers (``harness.layers``), the kernels' torch references and the techniques all
import from here, so none of them needs another to do arithmetic.
"""
