"""Masked attention as one op: the autograd Function over the Triton forward and backward, the plain-torch
reference (the CPU path and the kernels' test oracle), and the public functions that choose between them."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.nn import MultiheadAttention

from mmodal.kernels.attention.backward import attention_backward
from mmodal.kernels.attention.forward import attention_forward, check_inputs, kernel_supports
from mmodal.kernels.dispatch import choice, use_triton


class MaskedAttentionFunction(torch.autograd.Function):
    """Triton forward and backward of :func:`masked_attention`."""

    @staticmethod
    def forward(ctx, q, k, v, key_mask, causal, prefix, see_self):
        out, lse = attention_forward(q, k, v, key_mask, causal, prefix, see_self)
        ctx.save_for_backward(q, k, v, key_mask, out, lse)
        ctx.causal, ctx.prefix, ctx.see_self = causal, prefix, see_self
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, key_mask, out, lse = ctx.saved_tensors
        dq, dk, dv = attention_backward(
            grad_out, q, k, v, out, lse, key_mask, causal=ctx.causal, prefix=ctx.prefix, see_self=ctx.see_self
        )
        return dq, dk, dv, None, None, None, None


def visible_keys(
    key_mask: torch.Tensor | None,
    len_q: int,
    len_k: int,
    causal: bool = False,
    prefix: int = 0,
    see_self: bool = False,
    device: torch.device | str | None = None,
) -> torch.Tensor | None:
    """(B or 1, 1, Tq, Tk) bool, True where query i attends to key j; None when every key is visible."""
    if key_mask is None and not causal:
        return None  # see_self adds nothing where everything is visible
    if key_mask is not None:
        device = key_mask.device
        visible = key_mask[:, None, None, :]
    else:
        visible = torch.ones(1, 1, 1, len_k, dtype=torch.bool, device=device)
    rows = torch.arange(len_q, device=device)[:, None]
    cols = torch.arange(len_k, device=device)[None, :]
    if causal:
        visible = visible & ((cols <= rows) | (cols < prefix))
    if see_self:
        visible = visible | (cols == rows)
    return visible.expand(visible.shape[0], 1, len_q, len_k)


def _attended_keys(q, k, key_mask, causal, prefix, see_self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(Which keys each query attends to, whether it sees any), both None where every key is visible. A row that
    sees nothing attends to everything, for finite values and gradients, and is zeroed afterwards."""
    visible = visible_keys(key_mask, q.shape[2], k.shape[2], causal, prefix, see_self, q.device)
    if visible is None:
        return None, None
    has_key = visible.any(dim=-1, keepdim=True)
    return visible | ~has_key, has_key


def masked_attention_reference(q, k, v, key_mask=None, causal=False, prefix=0, see_self=False) -> torch.Tensor:
    """:func:`masked_attention` (same arguments) in plain torch: scaled_dot_product_attention with the boolean mask."""
    attended, has_key = _attended_keys(q, k, key_mask, causal, prefix, see_self)
    if attended is None:
        return F.scaled_dot_product_attention(q, k, v)
    return torch.where(has_key, F.scaled_dot_product_attention(q, k, v, attn_mask=attended), 0.0)


def attention_probabilities(q, k, key_mask=None, causal=False, prefix=0, see_self=False) -> torch.Tensor:
    """(B, H, Tq, Tk) softmax weights of :func:`masked_attention` (same arguments but v), in plain torch; rows that
    see nothing are 0."""
    scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)  # scaled first, as nn.MultiheadAttention
    attended, has_key = _attended_keys(q, k, key_mask, causal, prefix, see_self)
    if attended is None:
        return scores.softmax(dim=-1)
    return torch.where(has_key, scores.masked_fill(~attended, float("-inf")).softmax(dim=-1), 0.0)


def masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    causal: bool = False,
    prefix: int = 0,
    see_self: bool = False,
) -> torch.Tensor:
    """Attention of q (B, H, Tq, d) over k, v (B, H, Tk, d) → (B, H, Tq, d); see :mod:`mmodal.kernels.attention`.

    Args:
        key_mask: (B, Tk) bool, True for real keys; None: all are real.
        causal: query i sees keys j <= i only (and the prefix).
        prefix: with ``causal``, the first ``prefix`` keys are seen by every query.
        see_self: query i also sees key i, padding or not.
    """
    check_inputs(q, k, v, key_mask, prefix)
    # Auto mode keeps inputs the kernel does not take on the reference; a forced triton says why it cannot.
    if use_triton(q, k, v, key_mask) and (kernel_supports(q) or choice() == "triton"):
        return MaskedAttentionFunction.apply(q, k, v, key_mask, causal, prefix, see_self)
    return masked_attention_reference(q, k, v, key_mask, causal, prefix, see_self)


def multihead_attention(
    attention: MultiheadAttention,
    query: torch.Tensor,
    key_value: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    need_weights: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``attention(query, key_value, key_value, key_padding_mask=~key_mask)`` through :func:`masked_attention`.

    Uses the module's own projections, so a batch-first ``nn.MultiheadAttention`` keeps its parameters and
    state-dict names. query (B, T, C), key_value (B, S, C), key_mask (B, S) bool of real tokens. Returns the
    output (B, T, C) and, when ``need_weights``, the attention weights averaged over heads (B, T, S), both then
    from the plain-torch reference (the weights are for looking at, not a hot path).
    """
    if not attention.batch_first or not attention._qkv_same_embed_dim:
        raise ValueError("multihead_attention takes batch_first modules whose q, k, v share one embedding size")
    if attention.bias_k is not None or attention.add_zero_attn:
        raise ValueError("multihead_attention does not take add_bias_kv or add_zero_attn")
    if attention.training and attention.dropout > 0:
        raise ValueError("multihead_attention has no attention dropout; set the module's dropout to 0")
    batch, len_q, width = query.shape
    len_k = key_value.shape[1]
    heads = attention.num_heads
    head_dim = width // heads
    weight, bias = attention.in_proj_weight, attention.in_proj_bias
    if query is key_value:
        q, k, v = F.linear(query, weight, bias).view(batch, len_q, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    else:
        w_q, w_kv = weight.split([width, 2 * width])
        b_q, b_kv = bias.split([width, 2 * width]) if bias is not None else (None, None)
        q = F.linear(query, w_q, b_q).view(batch, len_q, heads, head_dim).transpose(1, 2)
        k, v = F.linear(key_value, w_kv, b_kv).view(batch, len_k, 2, heads, head_dim).permute(2, 0, 3, 1, 4)
    weights = None
    if need_weights:
        check_inputs(q, k, v, key_mask, 0)
        probs = attention_probabilities(q, k, key_mask)
        attended = probs @ v
        weights = probs.mean(dim=1)
    else:
        attended = masked_attention(q, k, v, key_mask=key_mask)
    out = attention.out_proj(attended.transpose(1, 2).reshape(batch, len_q, width))
    return out, weights
