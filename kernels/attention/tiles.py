"""The blocks that masked attention's forward and backward kernels share: which (batch item, head) a program
works on, loading and storing rows of one head, a block of keys with its padding, which keys each query sees, the
scores of a tile, and how far a block of queries sweeps the keys."""

from __future__ import annotations

from mmodal.kernels.dispatch import tl, triton
from mmodal.kernels.launch import dot

# exp(x) == exp2(x * LOG2E), and exp2 is the native instruction; kernels read globals only as constexpr.
LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def program_head(n_heads):
    """(batch item, head) of this program, the grid's axis 0, as 64-bit offsets: B * H * T * d passes 2**31 at a
    few thousand candidates of long sequences."""
    pid_bh = tl.program_id(0)
    return (pid_bh // n_heads).to(tl.int64), (pid_bh % n_heads).to(tl.int64)


@triton.jit
def head_rows(X, strides, b, h, offs, offs_d, n_rows, head_dim):
    """Pointers to rows ``offs`` of X[b, h] for X (B, H, T, d) with these strides, and where they exist."""
    ptrs = X + b * strides[0] + h * strides[1] + offs[:, None] * strides[2] + offs_d[None, :] * strides[3]
    return ptrs, (offs < n_rows)[:, None] & (offs_d < head_dim)[None, :]


@triton.jit
def load_rows(X, strides, b, h, offs, offs_d, n_rows, head_dim):
    """Rows ``offs`` of X[b, h], zeros past the sequence and the head size."""
    ptrs, exist = head_rows(X, strides, b, h, offs, offs_d, n_rows, head_dim)
    return tl.load(ptrs, mask=exist, other=0.0)


@triton.jit
def store_rows(X, strides, b, h, offs, offs_d, n_rows, head_dim, rows):
    ptrs, exist = head_rows(X, strides, b, h, offs, offs_d, n_rows, head_dim)
    tl.store(ptrs, rows.to(X.dtype.element_ty), mask=exist)


@triton.jit
def key_block(K, V, KeyMask, k_strides, v_strides, mask_strides, b, h, offs_n, offs_d, len_k, head_dim):
    """Keys and values ``offs_n`` of item b, head h, and (BLOCK_N,) bool: which exist and are not padding."""
    k = load_rows(K, k_strides, b, h, offs_n, offs_d, len_k, head_dim)
    v = load_rows(V, v_strides, b, h, offs_n, offs_d, len_k, head_dim)
    key_ok = offs_n < len_k
    if KeyMask is not None:
        flags = tl.load(KeyMask + b * mask_strides[0] + offs_n * mask_strides[1], mask=key_ok, other=0)
        key_ok = key_ok & (flags != 0)
    return k, v, key_ok


@triton.jit
def visible_block(offs_m, offs_n, key_ok, len_q, len_k, prefix, CAUSAL: tl.constexpr, SEE_SELF: tl.constexpr):
    """(BLOCK_M, BLOCK_N) bool: which of these keys each of these queries attends to."""
    visible = key_ok[None, :]
    if CAUSAL:
        visible = visible & ((offs_n[None, :] <= offs_m[:, None]) | (offs_n[None, :] < prefix))
    if SEE_SELF:
        visible = visible | ((offs_n[None, :] == offs_m[:, None]) & (offs_n[None, :] < len_k))
    return visible & (offs_m[:, None] < len_q)


@triton.jit
def scores(q, k, key_ok, offs_m, offs_n, len_q, len_k, prefix, qk_scale, CAUSAL: tl.constexpr, SEE_SELF: tl.constexpr):
    """The tile's scores q . k * qk_scale, and which of them are visible (the kernels scale into base 2)."""
    visible = visible_block(offs_m, offs_n, key_ok, len_q, len_k, prefix, CAUSAL, SEE_SELF)
    return dot(q, tl.trans(k)) * qk_scale, visible


@triton.jit
def key_sweep_end(start_m, len_k, prefix, BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr):
    """End of the keys that a block of queries from ``start_m`` sees."""
    end = len_k
    if CAUSAL:
        # No query of the block sees a key past its last row, except the bidirectional prefix.
        end = tl.minimum(len_k, tl.maximum(start_m + BLOCK_M, prefix))
    return end
