"""Masked attention's backward pass: the probabilities are recomputed from the forward's logsumexp, with dK and
dV accumulated per key block over the query blocks and dQ per query block over the key blocks."""

from __future__ import annotations

import math

import torch

from mmodal.kernels.attention.forward import key_mask_flags, launch_options
from mmodal.kernels.attention.tiles import LOG2E, key_block, key_sweep_end, load_rows, program_head, scores, store_rows
from mmodal.kernels.dispatch import tl, triton
from mmodal.kernels.launch import dot


@triton.jit
def _attention_backward_delta_kernel(
    Out, dOut, out_strides, do_strides,
    Delta,
    n_heads, len_q, head_dim,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """delta = rowsum(dO * O): the softmax backward's correction term, once per query row."""
    b, h = program_head(n_heads)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    o = load_rows(Out, out_strides, b, h, offs_m, offs_d, len_q, head_dim)
    do = load_rows(dOut, do_strides, b, h, offs_m, offs_d, len_q, head_dim)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(Delta + tl.program_id(0).to(tl.int64) * len_q + offs_m, delta, mask=offs_m < len_q)


@triton.jit
def _query_block(Q, dOut, LSE, Delta, q_strides, do_strides, b, h, row_stats, offs_m, offs_d, len_q, head_dim):
    """Queries ``offs_m`` of item b, head h, their output gradients, and each row's logsumexp and delta."""
    q = load_rows(Q, q_strides, b, h, offs_m, offs_d, len_q, head_dim)
    do = load_rows(dOut, do_strides, b, h, offs_m, offs_d, len_q, head_dim)
    row_ok = offs_m < len_q
    lse = tl.load(LSE + row_stats + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(Delta + row_stats + offs_m, mask=row_ok, other=0.0)
    return q, do, lse, delta


@triton.jit
def _probabilities(
    q, k, lse, key_ok, offs_m, offs_n, len_q, len_k, prefix, qk_scale, CAUSAL: tl.constexpr, SEE_SELF: tl.constexpr
):
    """The tile's softmax weights P, recomputed from the logsumexp of each row."""
    s, visible = scores(q, k, key_ok, offs_m, offs_n, len_q, len_k, prefix, qk_scale, CAUSAL, SEE_SELF)
    return tl.where(visible, tl.math.exp2(s - lse[:, None] * LOG2E), 0.0)


@triton.jit
def _score_grads(p, do, v, delta):
    """dS = P * (dO V^T - delta): the gradient of the tile's scores."""
    return p * (dot(do, tl.trans(v)) - delta[:, None])


@triton.jit
def _attention_backward_kernel(
    Q, K, V, KeyMask, q_strides, k_strides, v_strides, mask_strides,
    dOut, LSE, Delta, do_strides,
    dQ, dK, dV, dq_strides, dk_strides, dv_strides,
    n_heads, len_q, len_k, head_dim, prefix, scale,
    CAUSAL: tl.constexpr, SEE_SELF: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    KEY_BLOCKS: tl.constexpr,
):  # fmt: skip
    """dK and dV of one key block (KEY_BLOCKS), else dQ of one query block; the grid's axis 1 runs over them."""
    b, h = program_head(n_heads)
    offs_d = tl.arange(0, BLOCK_D)
    row_stats = tl.program_id(0).to(tl.int64) * len_q  # this head's first row in LSE and Delta
    qk_scale = scale * LOG2E
    if KEY_BLOCKS:
        start_n = tl.program_id(1) * BLOCK_N
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k, v, key_ok = key_block(
            K, V, KeyMask, k_strides, v_strides, mask_strides, b, h, offs_n, offs_d, len_k, head_dim
        )
        dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        first_m = 0
        if CAUSAL:
            # Keys past the prefix are seen only by queries at or after them.
            first_m = tl.where(start_n < prefix, 0, (start_n // BLOCK_M) * BLOCK_M)
        for start_m in range(first_m, len_q, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            q, do, lse, delta = _query_block(
                Q, dOut, LSE, Delta, q_strides, do_strides, b, h, row_stats, offs_m, offs_d, len_q, head_dim
            )
            p = _probabilities(q, k, lse, key_ok, offs_m, offs_n, len_q, len_k, prefix, qk_scale, CAUSAL, SEE_SELF)
            dv += dot(tl.trans(p.to(do.dtype)), do)
            ds = _score_grads(p, do, v, delta)
            dk += dot(tl.trans(ds.to(q.dtype)), q)
        store_rows(dK, dk_strides, b, h, offs_n, offs_d, len_k, head_dim, dk * scale)
        store_rows(dV, dv_strides, b, h, offs_n, offs_d, len_k, head_dim, dv)
    else:
        start_m = tl.program_id(1) * BLOCK_M
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q, do, lse, delta = _query_block(
            Q, dOut, LSE, Delta, q_strides, do_strides, b, h, row_stats, offs_m, offs_d, len_q, head_dim
        )
        dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        for start_n in range(0, key_sweep_end(start_m, len_k, prefix, BLOCK_M, CAUSAL), BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            k, v, key_ok = key_block(
                K, V, KeyMask, k_strides, v_strides, mask_strides, b, h, offs_n, offs_d, len_k, head_dim
            )
            p = _probabilities(q, k, lse, key_ok, offs_m, offs_n, len_q, len_k, prefix, qk_scale, CAUSAL, SEE_SELF)
            ds = _score_grads(p, do, v, delta)
            dq += dot(ds.to(k.dtype), k)
        store_rows(dQ, dq_strides, b, h, offs_m, offs_d, len_q, head_dim, dq * scale)


def attention_backward(
    grad_out, q, k, v, out, lse, key_mask=None, causal=False, prefix=0, see_self=False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Triton backward from the forward's out and logsumexp: (dq, dk, dv)."""
    if grad_out.shape != out.shape:
        raise ValueError(f"masked_attention: grad_out must be {tuple(out.shape)}, got {tuple(grad_out.shape)}")
    batch, heads, len_q, head_dim = q.shape
    len_k = k.shape[2]
    dq = torch.zeros(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.zeros(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.zeros(v.shape, dtype=v.dtype, device=v.device)
    if q.numel() == 0 or k.numel() == 0:
        return dq, dk, dv
    options = launch_options(len_q, len_k, head_dim, causal, see_self)
    block_m, block_n = options["BLOCK_M"], options["BLOCK_N"]

    delta = torch.empty((batch, heads, len_q), dtype=torch.float32, device=q.device)
    _attention_backward_delta_kernel[(batch * heads, triton.cdiv(len_q, block_m))](
        out, grad_out, out.stride(), grad_out.stride(),
        delta,
        heads, len_q, head_dim,
        BLOCK_M=block_m, BLOCK_D=options["BLOCK_D"], num_warps=options["num_warps"],
    )  # fmt: skip
    flags, mask_strides = key_mask_flags(key_mask)
    for key_blocks, n_blocks in ((True, triton.cdiv(len_k, block_n)), (False, triton.cdiv(len_q, block_m))):
        _attention_backward_kernel[(batch * heads, n_blocks)](
            q, k, v, flags, q.stride(), k.stride(), v.stride(), mask_strides,
            grad_out, lse, delta, grad_out.stride(),
            dq, dk, dv, dq.stride(), dk.stride(), dv.stride(),
            heads, len_q, len_k, head_dim, prefix, 1.0 / math.sqrt(head_dim),
            KEY_BLOCKS=key_blocks, **options,
        )  # fmt: skip
    return dq, dk, dv
