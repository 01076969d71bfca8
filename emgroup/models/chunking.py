"""A function of a batch of images applied a part of the batch at a time: in chunks whose intermediates, in training,
are recomputed in the backward pass instead of stored (``torch.utils.checkpoint``), to bound memory; and, on the CPU,
in blocks small enough that one layer's output is still in the core's cache when the next layer reads it.

A TARGET-VAE training step at 100 x 100 px and batch 100 (P8, six-layer generator) would otherwise store about
20 GiB of encoder feature maps and generator activations; chunked, it stores one chunk's at a time, at the price of
the chunks' forward pass computed twice (benchmarks/throughput.py, docs/benchmarks.md "Memory").
"""

import torch
from torch.utils.checkpoint import checkpoint

#: bytes that one call may keep for backward before its batch is split (below it, nothing is recomputed: a 50 px
#: TARGET-VAE batch of 100 runs straight), and the bytes each chunk keeps then (its transient peak is a few times
#: more: the lifting convolution's FFT spectra)
STORE_LIMIT, CHUNK_BYTES = 3 << 30, 1 << 27
#: bytes of one intermediate (one layer's output) per block of :func:`in_cache_blocks`
CACHE_BYTES = 1 << 21


def chunk_size(n: int, item_bytes: float) -> int:
    """Images per chunk for ``n`` images of which each keeps ``item_bytes`` for backward (n: no split)."""
    return n if n * item_bytes <= STORE_LIMIT else max(1, int(CHUNK_BYTES // item_bytes))


def chunked(fn, *tensors: torch.Tensor, item_bytes: float) -> torch.Tensor:
    """``fn(*tensors)`` for tensors whose first dimension indexes images, computed :func:`chunk_size` images at a time
    and written into one output (``fn`` maps each image independently and returns one tensor). With gradients on, a
    chunk keeps only its inputs and output: its intermediates are recomputed when the backward pass reaches it, so
    the gradient is the straightforward computation's (up to the order of floating-point sums)."""
    n = len(tensors[0])
    size = chunk_size(n, item_bytes)
    if size >= n:
        return fn(*tensors)
    out = None
    for start in range(0, n, size):
        part = [t[start:start + size] for t in tensors]
        value = (checkpoint(fn, *part, use_reentrant=False, preserve_rng_state=False) if torch.is_grad_enabled()
                 else fn(*part))
        if out is None:  # written into in place, so no chunk's result outlives its step in the heap
            out = value.new_empty(n, *value.shape[1:])
        out[start:start + size] = value
    return out


def in_cache_blocks(fn, *tensors: torch.Tensor, item_bytes: float) -> torch.Tensor:
    """``fn(*tensors)`` (images along the first dimension, each mapped independently, one tensor returned) computed
    in blocks of images whose intermediates of ``item_bytes`` each (one layer's output, per image) fit in
    ``CACHE_BYTES``, and concatenated. Nothing is recomputed: the same operations on smaller operands, for networks
    whose elementwise layers (tanh, bias) are bound by memory bandwidth, as a coordinate generator's are on the CPU
    (a spatial-VAE training step at 40 x 40 px, 256 units: 1.8x faster on 1 and 2 cores; docs/benchmarks.md)."""
    n = len(tensors[0])
    size = max(1, int(CACHE_BYTES // item_bytes))
    if size >= n:
        return fn(*tensors)
    return torch.cat([fn(*(t[start:start + size] for t in tensors)) for start in range(0, n, size)])
