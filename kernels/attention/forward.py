"""Masked attention's inputs and forward pass: the checks every path runs, the launch options both directions
share, and the FlashAttention-2 forward kernel with its launcher."""

from __future__ import annotations

import math

import torch

from mmodal.kernels.attention.tiles import LOG2E, key_block, key_sweep_end, load_rows, program_head, scores, store_rows
from mmodal.kernels.dispatch import interpreting, tl, triton
from mmodal.kernels.launch import KERNEL_DTYPES, block_size, dot

MAX_HEAD_DIM = 128


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None, prefix: int) -> None:
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


def check_kernel_inputs(q: torch.Tensor) -> None:
    if not q.is_cuda and not interpreting():
        raise ValueError("masked_attention: the Triton kernel takes CUDA tensors (CPU ones under TRITON_INTERPRET=1)")
    if q.dtype not in KERNEL_DTYPES:
        names = ", ".join(str(d) for d in KERNEL_DTYPES)
        raise ValueError(f"masked_attention: the Triton kernel takes {names}, got {q.dtype}")
    if not 0 < q.shape[-1] <= MAX_HEAD_DIM:
        raise ValueError(f"masked_attention: the Triton kernel takes head dims 1..{MAX_HEAD_DIM}, got {q.shape[-1]}")


def launch_options(len_q: int, len_k: int, head_dim: int, causal: bool, see_self: bool) -> dict:
    """The masking flags, block sizes no larger than the sequences they tile, and warps, as launch keywords."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    # Past 64 rows a block's fp32 tiles of a d=128 head spill registers.
    widest = 64 if block_d <= 64 else 32
    return dict(
        CAUSAL=causal,
        SEE_SELF=see_self,
        BLOCK_M=block_size(len_q, most=widest),
        BLOCK_N=block_size(len_k, most=widest),
        BLOCK_D=block_d,
        num_warps=4 if block_d <= 64 else 8,
    )


def key_mask_flags(key_mask: torch.Tensor | None) -> tuple[torch.Tensor | None, tuple[int, int]]:
    """The key mask as the kernels read it, and its strides."""
    if key_mask is None:
        return None, (0, 0)
    flags = key_mask.view(torch.uint8)  # the same bytes; Triton loads them as integers
    return flags, flags.stride()


@triton.jit
def _attention_forward_kernel(
    Q, K, V, KeyMask, q_strides, k_strides, v_strides, mask_strides,
    Out, LSE, out_strides,
    n_heads, len_q, len_k, head_dim, prefix, scale,
    CAUSAL: tl.constexpr, SEE_SELF: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Out and the logsumexp of each row for one block of queries, streaming the key blocks it sees through an
    online softmax."""
    b, h = program_head(n_heads)
    start_m = tl.program_id(1) * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = load_rows(Q, q_strides, b, h, offs_m, offs_d, len_q, head_dim)
    qk_scale = scale * LOG2E  # scores in base 2 from here on

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, key_sweep_end(start_m, len_k, prefix, BLOCK_M, CAUSAL), BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k, v, key_ok = key_block(
            K, V, KeyMask, k_strides, v_strides, mask_strides, b, h, offs_n, offs_d, len_k, head_dim
        )
        s, visible = scores(q, k, key_ok, offs_m, offs_n, len_q, len_k, prefix, qk_scale, CAUSAL, SEE_SELF)
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A row that has seen no key yet keeps max -inf; shifting by 0 instead keeps exp2 at 0, not NaN.
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_shift[:, None])
        alpha = tl.math.exp2(m_i - m_shift)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + dot(p.to(v.dtype), v)
        m_i = m_new

    has_key = l_i > 0.0
    out = acc / tl.where(has_key, l_i, 1.0)[:, None]
    # +inf for a row that sees nothing makes every probability the backward recomputes from it zero.
    lse = tl.where(has_key, (m_i + tl.math.log2(tl.where(has_key, l_i, 1.0))) / LOG2E, float("inf"))
    store_rows(Out, out_strides, b, h, offs_m, offs_d, len_q, head_dim, out)
    tl.store(LSE + tl.program_id(0).to(tl.int64) * len_q + offs_m, lse, mask=offs_m < len_q)


def attention_forward(
    q, k, v, key_mask=None, causal=False, prefix=0, see_self=False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton forward of :func:`~mmodal.kernels.attention.masked_attention` (same arguments): out (B, H, Tq, d) and
    the logsumexp (B, H, Tq) in float32, +inf where a row sees nothing."""
    check_inputs(q, k, v, key_mask, prefix)
    check_kernel_inputs(q)
    batch, heads, len_q, head_dim = q.shape
    len_k = k.shape[2]
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((batch, heads, len_q), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        lse.fill_(float("inf"))
        return out, lse
    options = launch_options(len_q, len_k, head_dim, causal, see_self)
    flags, mask_strides = key_mask_flags(key_mask)
    _attention_forward_kernel[(batch * heads, triton.cdiv(len_q, options["BLOCK_M"]))](
        q, k, v, flags, q.stride(), k.stride(), v.stride(), mask_strides,
        out, lse, out.stride(),
        heads, len_q, len_k, head_dim, prefix, 1.0 / math.sqrt(head_dim),
        **options,
    )  # fmt: skip
    return out, lse
