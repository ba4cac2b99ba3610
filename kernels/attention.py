"""Masked multi-head attention for short, padded sequences batched over many items.

For q (B, H, Tq, d) and k, v (B, H, Tk, d), ``masked_attention`` computes

    out[b, h, i] = sum over visible j of softmax_j(q[b, h, i] . k[b, h, j] / sqrt(d)) * v[b, h, j]

where key j is visible to query i iff ``key_mask[b, j]`` and (not ``causal`` or ``j <= i`` or ``j < prefix``),
or ``see_self`` and ``i == j``. A query that sees no key at all gets zeros (and zero gradients), not NaNs.

The Triton kernels follow FlashAttention-2: the forward streams key blocks through an online softmax and keeps
each row's logsumexp; the backward recomputes the probabilities from it, with dK and dV accumulated per key
block over the query blocks and dQ per query block over the key blocks, so nothing of size Tq x Tk is stored.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kernels.dispatch import HAS_TRITON, choice, interpreting, use_triton

if HAS_TRITON:
    import triton
    import triton.language as tl

    # exp(x) == exp2(x * LOG2E), and exp2 is the native instruction; kernels read globals only as constexpr.
    LOG2E = tl.constexpr(1.4426950408889634)
else:  # the reference still runs; the kernels below are defined but never launched

    class _NoTriton:
        @staticmethod
        def jit(fn):
            return fn

    triton = _NoTriton()

MAX_HEAD_DIM = 128
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# ----------------------------------------------------------------------------------------------- kernels


@triton.jit
def _visible(offs_m, offs_n, key_ok, len_q, len_k, prefix, CAUSAL: tl.constexpr, SEE_SELF: tl.constexpr):
    """(BLOCK_M, BLOCK_N) bool: which of these keys each of these queries attends to."""
    visible = key_ok[None, :]
    if CAUSAL:
        visible = visible & ((offs_n[None, :] <= offs_m[:, None]) | (offs_n[None, :] < prefix))
    if SEE_SELF:
        visible = visible | ((offs_n[None, :] == offs_m[:, None]) & (offs_n[None, :] < len_k))
    return visible & (offs_m[:, None] < len_q)


@triton.jit
def _key_mask_block(KeyMask, b, offs_n, len_k, stride_mask_b, stride_mask_n, HAS_KEY_MASK: tl.constexpr):
    """(BLOCK_N,) bool: keys that exist and are not padding."""
    key_ok = offs_n < len_k
    if HAS_KEY_MASK:
        flags = tl.load(KeyMask + b * stride_mask_b + offs_n * stride_mask_n, mask=key_ok, other=0)
        key_ok = key_ok & (flags != 0)
    return key_ok


@triton.jit
def _attention_forward_kernel(
    Q,
    K,
    V,
    KeyMask,
    Out,
    LSE,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_ob,
    stride_oh,
    stride_om,
    stride_od,
    stride_mask_b,
    stride_mask_n,
    n_heads,
    len_q,
    len_k,
    head_dim,
    prefix,
    scale,
    HAS_KEY_MASK: tl.constexpr,
    CAUSAL: tl.constexpr,
    SEE_SELF: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    start_m = tl.program_id(1) * BLOCK_M
    # 64-bit offsets: B * H * T * d passes 2**31 at a few thousand candidates of long sequences.
    b = (pid_bh // n_heads).to(tl.int64)
    h = (pid_bh % n_heads).to(tl.int64)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < len_q
    d_ok = offs_d < head_dim

    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    qk_scale = scale * LOG2E  # scores in base 2 from here on

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    hi = len_k
    if CAUSAL:
        # No query of this block sees a key past its last row, except the bidirectional prefix.
        hi = tl.minimum(len_k, tl.maximum(start_m + BLOCK_M, prefix))
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_ok = offs_n < len_k
        tile_ok = col_ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=tile_ok, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=tile_ok, other=0.0)
        key_ok = _key_mask_block(KeyMask, b, offs_n, len_k, stride_mask_b, stride_mask_n, HAS_KEY_MASK)
        visible = _visible(offs_m, offs_n, key_ok, len_q, len_k, prefix, CAUSAL, SEE_SELF)

        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A row that has seen no key yet keeps max -inf; shifting by 0 instead keeps exp2 at 0, not NaN.
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_shift[:, None])
        alpha = tl.math.exp2(m_i - m_shift)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    has_key = l_i > 0.0
    out = acc / tl.where(has_key, l_i, 1.0)[:, None]
    # +inf for a row that sees nothing makes every probability the backward recomputes from it zero.
    lse = tl.where(has_key, (m_i + tl.math.log2(tl.where(has_key, l_i, 1.0))) / LOG2E, float("inf"))
    o_ptrs = Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    tl.store(LSE + pid_bh.to(tl.int64) * len_q + offs_m, lse, mask=row_ok)


@triton.jit
def _attention_backward_delta_kernel(
    Out,
    dOut,
    Delta,
    stride_ob,
    stride_oh,
    stride_om,
    stride_od,
    stride_dob,
    stride_doh,
    stride_dom,
    stride_dod,
    n_heads,
    len_q,
    head_dim,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """delta = rowsum(dO * O): the softmax backward's correction term, once per query row."""
    pid_bh = tl.program_id(0)
    b = (pid_bh // n_heads).to(tl.int64)
    h = (pid_bh % n_heads).to(tl.int64)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < len_q
    tile_ok = row_ok[:, None] & (offs_d[None, :] < head_dim)
    o = tl.load(
        Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od,
        mask=tile_ok,
        other=0.0,
    )
    do = tl.load(
        dOut + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dom + offs_d[None, :] * stride_dod,
        mask=tile_ok,
        other=0.0,
    )
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(Delta + pid_bh.to(tl.int64) * len_q + offs_m, delta, mask=row_ok)


@triton.jit
def _attention_backward_dkdv_kernel(
    Q,
    K,
    V,
    KeyMask,
    dOut,
    LSE,
    Delta,
    dK,
    dV,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_dob,
    stride_doh,
    stride_dom,
    stride_dod,
    stride_dkb,
    stride_dkh,
    stride_dkn,
    stride_dkd,
    stride_dvb,
    stride_dvh,
    stride_dvn,
    stride_dvd,
    stride_mask_b,
    stride_mask_n,
    n_heads,
    len_q,
    len_k,
    head_dim,
    prefix,
    scale,
    HAS_KEY_MASK: tl.constexpr,
    CAUSAL: tl.constexpr,
    SEE_SELF: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    start_n = tl.program_id(1) * BLOCK_N
    b = (pid_bh // n_heads).to(tl.int64)
    h = (pid_bh % n_heads).to(tl.int64)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    col_ok = offs_n < len_k
    d_ok = offs_d < head_dim
    key_tile_ok = col_ok[:, None] & d_ok[None, :]

    k = tl.load(
        K + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd,
        mask=key_tile_ok,
        other=0.0,
    )
    v = tl.load(
        V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
        mask=key_tile_ok,
        other=0.0,
    )
    key_ok = _key_mask_block(KeyMask, b, offs_n, len_k, stride_mask_b, stride_mask_n, HAS_KEY_MASK)
    q_base = Q + b * stride_qb + h * stride_qh
    do_base = dOut + b * stride_dob + h * stride_doh
    row_stats = pid_bh.to(tl.int64) * len_q
    qk_scale = scale * LOG2E

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    lo = 0
    if CAUSAL:
        # Keys past the prefix are seen only by queries at or after them.
        lo = tl.where(start_n < prefix, 0, (start_n // BLOCK_M) * BLOCK_M)
    for start_m in range(lo, len_q, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < len_q
        tile_ok = row_ok[:, None] & d_ok[None, :]
        q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd, mask=tile_ok, other=0.0)
        do = tl.load(do_base + offs_m[:, None] * stride_dom + offs_d[None, :] * stride_dod, mask=tile_ok, other=0.0)
        lse = tl.load(LSE + row_stats + offs_m, mask=row_ok, other=float("inf"))
        delta = tl.load(Delta + row_stats + offs_m, mask=row_ok, other=0.0)
        visible = _visible(offs_m, offs_n, key_ok, len_q, len_k, prefix, CAUSAL, SEE_SELF)

        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        p = tl.where(visible, tl.math.exp2(s - lse[:, None] * LOG2E), 0.0)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=DOT_PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT_PRECISION)

    dk = dk * scale
    tl.store(
        dK + b * stride_dkb + h * stride_dkh + offs_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkd,
        dk.to(dK.dtype.element_ty),
        mask=key_tile_ok,
    )
    tl.store(
        dV + b * stride_dvb + h * stride_dvh + offs_n[:, None] * stride_dvn + offs_d[None, :] * stride_dvd,
        dv.to(dV.dtype.element_ty),
        mask=key_tile_ok,
    )


@triton.jit
def _attention_backward_dq_kernel(
    Q,
    K,
    V,
    KeyMask,
    dOut,
    LSE,
    Delta,
    dQ,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_dob,
    stride_doh,
    stride_dom,
    stride_dod,
    stride_dqb,
    stride_dqh,
    stride_dqm,
    stride_dqd,
    stride_mask_b,
    stride_mask_n,
    n_heads,
    len_q,
    len_k,
    head_dim,
    prefix,
    scale,
    HAS_KEY_MASK: tl.constexpr,
    CAUSAL: tl.constexpr,
    SEE_SELF: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    start_m = tl.program_id(1) * BLOCK_M
    b = (pid_bh // n_heads).to(tl.int64)
    h = (pid_bh % n_heads).to(tl.int64)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < len_q
    d_ok = offs_d < head_dim
    tile_ok = row_ok[:, None] & d_ok[None, :]

    q = tl.load(
        Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
        mask=tile_ok,
        other=0.0,
    )
    do = tl.load(
        dOut + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dom + offs_d[None, :] * stride_dod,
        mask=tile_ok,
        other=0.0,
    )
    row_stats = pid_bh.to(tl.int64) * len_q
    lse = tl.load(LSE + row_stats + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(Delta + row_stats + offs_m, mask=row_ok, other=0.0)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    qk_scale = scale * LOG2E

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    hi = len_k
    if CAUSAL:
        hi = tl.minimum(len_k, tl.maximum(start_m + BLOCK_M, prefix))
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_ok = offs_n < len_k
        key_tile_ok = col_ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=key_tile_ok, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=key_tile_ok, other=0.0)
        key_ok = _key_mask_block(KeyMask, b, offs_n, len_k, stride_mask_b, stride_mask_n, HAS_KEY_MASK)
        visible = _visible(offs_m, offs_n, key_ok, len_q, len_k, prefix, CAUSAL, SEE_SELF)

        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        p = tl.where(visible, tl.math.exp2(s - lse[:, None] * LOG2E), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)

    dq = dq * scale
    tl.store(
        dQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqm + offs_d[None, :] * stride_dqd,
        dq.to(dQ.dtype.element_ty),
        mask=tile_ok,
    )


# ----------------------------------------------------------------------------------------------- launchers


def _check_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None, prefix: int
) -> None:
    """Shapes, dtypes and devices every path needs; raises ValueError naming what is wrong."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"masked_attention: {name} must be (B, H, T, d), got shape {tuple(t.shape)}")
    batch, heads, _, head_dim = q.shape
    if k.shape[:2] != (batch, heads) or k.shape[3] != head_dim:
        raise ValueError(f"masked_attention: k must be (B={batch}, H={heads}, Tk, d={head_dim}), got {tuple(k.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"masked_attention: v must have k's shape {tuple(k.shape)}, got {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"masked_attention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"masked_attention: q, k, v must share a device, got {q.device}, {k.device}, {v.device}")
    if key_mask is not None:
        if key_mask.dtype != torch.bool:
            raise ValueError(f"masked_attention: key_mask must be bool (True for real keys), got {key_mask.dtype}")
        if tuple(key_mask.shape) != (batch, k.shape[2]):
            raise ValueError(
                f"masked_attention: key_mask must be (B={batch}, Tk={k.shape[2]}), got {tuple(key_mask.shape)}"
            )
        if key_mask.device != q.device:
            raise ValueError(f"masked_attention: key_mask is on {key_mask.device}, q on {q.device}")
    if prefix < 0:
        raise ValueError(f"masked_attention: prefix must be >= 0, got {prefix}")


def kernel_supports(q: torch.Tensor) -> bool:
    """Whether the Triton kernels take tensors of q's dtype and head size."""
    return q.dtype in KERNEL_DTYPES and 0 < q.shape[-1] <= MAX_HEAD_DIM


def _check_kernel_inputs(q: torch.Tensor) -> None:
    if not q.is_cuda and not interpreting():
        raise ValueError("masked_attention: the Triton kernel takes CUDA tensors (CPU ones under TRITON_INTERPRET=1)")
    if q.dtype not in KERNEL_DTYPES:
        names = ", ".join(str(d) for d in KERNEL_DTYPES)
        raise ValueError(f"masked_attention: the Triton kernel takes {names}, got {q.dtype}")
    if not 0 < q.shape[-1] <= MAX_HEAD_DIM:
        raise ValueError(f"masked_attention: the Triton kernel takes head dims 1..{MAX_HEAD_DIM}, got {q.shape[-1]}")


def _block_sizes(len_q: int, len_k: int, head_dim: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_D, num_warps): blocks no larger than the sequences they tile."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    # tl.dot needs every side >= 16; past 64 rows a block's fp32 tiles of a d=128 head spill registers.
    widest = 64 if block_d <= 64 else 32
    block_m = min(widest, max(16, triton.next_power_of_2(len_q)))
    block_n = min(widest, max(16, triton.next_power_of_2(len_k)))
    return block_m, block_n, block_d, 4 if block_d <= 64 else 8


def _dot_precision(dtype: torch.dtype) -> str:
    # Full fp32 products keep the kernel within float32 rounding of the reference; 16-bit inputs ignore it.
    return "ieee" if dtype == torch.float32 else "tf32"


def _mask_args(key_mask: torch.Tensor | None, fallback: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    if key_mask is None:
        return fallback, 0, 0
    flags = key_mask.view(torch.uint8)  # the same bytes; Triton loads them as integers
    return flags, flags.stride(0), flags.stride(1)


def attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    causal: bool = False,
    prefix: int = 0,
    see_self: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton forward: (out (B, H, Tq, d), logsumexp (B, H, Tq) in float32, +inf where a row sees nothing)."""
    _check_inputs(q, k, v, key_mask, prefix)
    _check_kernel_inputs(q)
    batch, heads, len_q, head_dim = q.shape
    len_k = k.shape[2]
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((batch, heads, len_q), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        lse.fill_(float("inf"))
        return out, lse
    block_m, block_n, block_d, num_warps = _block_sizes(len_q, len_k, head_dim)
    flags, stride_mask_b, stride_mask_n = _mask_args(key_mask, q)
    grid = (batch * heads, triton.cdiv(len_q, block_m))
    _attention_forward_kernel[grid](
        q,
        k,
        v,
        flags,
        out,
        lse,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *out.stride(),
        stride_mask_b,
        stride_mask_n,
        heads,
        len_q,
        len_k,
        head_dim,
        prefix,
        1.0 / math.sqrt(head_dim),
        HAS_KEY_MASK=key_mask is not None,
        CAUSAL=causal,
        SEE_SELF=see_self,
        DOT_PRECISION=_dot_precision(q.dtype),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        num_warps=num_warps,
    )
    return out, lse


def attention_backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    causal: bool = False,
    prefix: int = 0,
    see_self: bool = False,
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
    block_m, block_n, block_d, num_warps = _block_sizes(len_q, len_k, head_dim)
    flags, stride_mask_b, stride_mask_n = _mask_args(key_mask, q)
    scale = 1.0 / math.sqrt(head_dim)
    launch_options = dict(
        HAS_KEY_MASK=key_mask is not None,
        CAUSAL=causal,
        SEE_SELF=see_self,
        DOT_PRECISION=_dot_precision(q.dtype),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        num_warps=num_warps,
    )

    delta = torch.empty((batch, heads, len_q), dtype=torch.float32, device=q.device)
    _attention_backward_delta_kernel[(batch * heads, triton.cdiv(len_q, block_m))](
        out,
        grad_out,
        delta,
        *out.stride(),
        *grad_out.stride(),
        heads,
        len_q,
        head_dim,
        BLOCK_M=block_m,
        BLOCK_D=block_d,
        num_warps=num_warps,
    )
    _attention_backward_dkdv_kernel[(batch * heads, triton.cdiv(len_k, block_n))](
        q,
        k,
        v,
        flags,
        grad_out,
        lse,
        delta,
        dk,
        dv,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *grad_out.stride(),
        *dk.stride(),
        *dv.stride(),
        stride_mask_b,
        stride_mask_n,
        heads,
        len_q,
        len_k,
        head_dim,
        prefix,
        scale,
        **launch_options,
    )
    _attention_backward_dq_kernel[(batch * heads, triton.cdiv(len_q, block_m))](
        q,
        k,
        v,
        flags,
        grad_out,
        lse,
        delta,
        dq,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *grad_out.stride(),
        *dq.stride(),
        stride_mask_b,
        stride_mask_n,
        heads,
        len_q,
        len_k,
        head_dim,
        prefix,
        scale,
        **launch_options,
    )
    return dq, dk, dv


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


# ----------------------------------------------------------------------------------------------- reference


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


def masked_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    causal: bool = False,
    prefix: int = 0,
    see_self: bool = False,
) -> torch.Tensor:
    """:func:`masked_attention` in plain torch: scaled_dot_product_attention with the boolean mask."""
    visible = visible_keys(key_mask, q.shape[2], k.shape[2], causal, prefix, see_self, q.device)
    if visible is None:
        return F.scaled_dot_product_attention(q, k, v)
    has_key = visible.any(dim=-1, keepdim=True)
    # A row that sees nothing attends to everything (finite values and gradients), then is zeroed.
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=visible | ~has_key)
    return torch.where(has_key, out, 0.0)


def attention_probabilities(
    q: torch.Tensor,
    k: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    causal: bool = False,
    prefix: int = 0,
    see_self: bool = False,
) -> torch.Tensor:
    """(B, H, Tq, Tk) softmax weights of :func:`masked_attention`, in plain torch; rows that see nothing are 0."""
    scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)  # scaled first, as nn.MultiheadAttention
    visible = visible_keys(key_mask, q.shape[2], k.shape[2], causal, prefix, see_self, q.device)
    if visible is None:
        return scores.softmax(dim=-1)
    has_key = visible.any(dim=-1, keepdim=True)
    probs = scores.masked_fill(~(visible | ~has_key), float("-inf")).softmax(dim=-1)
    return torch.where(has_key, probs, 0.0)


# ----------------------------------------------------------------------------------------------- functional


def masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    causal: bool = False,
    prefix: int = 0,
    see_self: bool = False,
) -> torch.Tensor:
    """Attention of q (B, H, Tq, d) over k, v (B, H, Tk, d) → (B, H, Tq, d); see the module docstring.

    Args:
        key_mask: (B, Tk) bool, True for real keys; None: all are real.
        causal: query i sees keys j <= i only (and the prefix).
        prefix: with ``causal``, the first ``prefix`` keys are seen by every query.
        see_self: query i also sees key i, padding or not.
    """
    _check_inputs(q, k, v, key_mask, prefix)
    # Auto mode keeps inputs the kernel does not take on the reference; a forced triton says why it cannot.
    if use_triton(q, k, v, key_mask) and (kernel_supports(q) or choice() == "triton"):
        return MaskedAttentionFunction.apply(q, k, v, key_mask, causal, prefix, see_self)
    return masked_attention_reference(q, k, v, key_mask, causal, prefix, see_self)


def multihead_attention(
    attention: nn.MultiheadAttention,
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
        _check_inputs(q, k, v, key_mask, 0)
        probs = attention_probabilities(q, k, key_mask)
        attended = probs @ v
        weights = probs.mean(dim=1)
    else:
        attended = masked_attention(q, k, v, key_mask=key_mask)
    out = attention.out_proj(attended.transpose(1, 2).reshape(batch, len_q, width))
    return out, weights
