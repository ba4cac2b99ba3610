"""Masked multi-head attention for short, padded sequences batched over many items.

For q (B, H, Tq, d) and k, v (B, H, Tk, d), :func:`masked_attention` computes

    out[b, h, i] = sum over visible j of softmax_j(q[b, h, i] . k[b, h, j] / sqrt(d)) * v[b, h, j]

where key j is visible to query i iff ``key_mask[b, j]`` and (not ``causal`` or ``j <= i`` or ``j < prefix``),
or ``see_self`` and ``i == j``. A query that sees no key at all gets zeros (and zero gradients), not NaNs.

The Triton kernels follow FlashAttention-2: the forward streams key blocks through an online softmax and keeps
each row's logsumexp; the backward recomputes the probabilities from it, with dK and dV accumulated per key
block over the query blocks and dQ per query block over the key blocks, so nothing of size Tq x Tk is stored.

Read in this order:

- :mod:`~mmodal.kernels.attention.tiles`: the blocks both directions load and the visibility rule as a tile;
- :mod:`~mmodal.kernels.attention.forward`: input checks, launch options, the forward kernel and its launcher;
- :mod:`~mmodal.kernels.attention.backward`: the backward kernels and their launcher;
- :mod:`~mmodal.kernels.attention.op`: the autograd Function, the plain-torch reference and the public functions.
"""

from mmodal.kernels.attention.backward import attention_backward
from mmodal.kernels.attention.forward import MAX_HEAD_DIM, attention_forward, kernel_supports
from mmodal.kernels.attention.op import (
    MaskedAttentionFunction,
    attention_probabilities,
    masked_attention,
    masked_attention_reference,
    multihead_attention,
    visible_keys,
)
from mmodal.kernels.launch import KERNEL_DTYPES

__all__ = [
    "KERNEL_DTYPES",
    "MAX_HEAD_DIM",
    "MaskedAttentionFunction",
    "attention_backward",
    "attention_forward",
    "attention_probabilities",
    "kernel_supports",
    "masked_attention",
    "masked_attention_reference",
    "multihead_attention",
    "visible_keys",
]
