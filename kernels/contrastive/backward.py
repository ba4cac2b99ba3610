"""The contrastive loss's backward kernel: the gradient of one side's embeddings (and of the scale), recomputing
each logit tile from the forward's logsumexps."""

from __future__ import annotations

import torch

from mmodal.kernels.contrastive.forward import block_sizes, positive_pairs, positive_strides, raw_logits
from mmodal.kernels.dispatch import tl, triton
from mmodal.kernels.launch import dot, on_device, program_block


@triton.jit
def _nce_grad_kernel(
    a_ptr, b_ptr, scale_ptr, positives_ptr, a_strides, b_strides, pos_strides,
    a_lse_all_ptr, a_lse_positive_ptr, a_weight_ptr, b_lse_all_ptr, b_lse_positive_ptr, b_weight_ptr,
    grad_a_ptr, grad_strides, scale_grad_partials_ptr,
    n_a, n_b, dim,
    BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_OUT: tl.constexpr,
):  # fmt: skip
    """grad_a = scale * dS @ b for one block of ``a`` and one block of feature columns, where
    dS_ij = w_a_i (p_a_ij - q_a_ij) + w_b_j (p_b_ij - q_b_ij): p the softmax mass along that side, q the
    same among positives, w the side's loss weight (0 for items without a positive). The same kernel
    with a and b swapped gives grad_b, as dS is built symmetrically. Without ``scale_grad_partials_ptr`` the
    scale's gradient is not summed."""
    a_index, a_valid = program_block(0, n_a, BLOCK_A)
    out_d, out_valid = program_block(1, dim, BLOCK_OUT)
    scale = tl.load(scale_ptr)
    a_lse_all = tl.load(a_lse_all_ptr + a_index, mask=a_valid, other=0.0)
    a_lse_positive = tl.load(a_lse_positive_ptr + a_index, mask=a_valid, other=0.0)
    a_weight = tl.load(a_weight_ptr + a_index, mask=a_valid, other=0.0)
    grad = tl.zeros((BLOCK_A, BLOCK_OUT), dtype=tl.float32)
    scale_grad = tl.zeros((BLOCK_A,), dtype=tl.float32)
    for b_start in range(0, n_b, BLOCK_B):
        b_index = b_start + tl.arange(0, BLOCK_B)
        b_valid = b_index < n_b
        raw = raw_logits(a_ptr, b_ptr, a_strides, b_strides, a_index, b_index, n_a, n_b, dim, BLOCK_D)
        logits = raw * scale
        positive = positive_pairs(positives_ptr, pos_strides, a_index, b_index, n_a, n_b)
        b_lse_all = tl.load(b_lse_all_ptr + b_index, mask=b_valid, other=0.0)
        b_lse_positive = tl.load(b_lse_positive_ptr + b_index, mask=b_valid, other=0.0)
        b_weight = tl.load(b_weight_ptr + b_index, mask=b_valid, other=0.0)
        # Off the positives q is 0; the where also keeps exp(s - (-inf)) of positive-less items out.
        a_side = tl.exp(logits - a_lse_all[:, None]) - tl.where(positive, tl.exp(logits - a_lse_positive[:, None]), 0.0)
        b_side = tl.exp(logits - b_lse_all[None, :]) - tl.where(positive, tl.exp(logits - b_lse_positive[None, :]), 0.0)
        d_logits = a_weight[:, None] * a_side + b_weight[None, :] * b_side
        d_logits = tl.where(a_valid[:, None] & b_valid[None, :], d_logits, 0.0)
        b_out = tl.load(
            b_ptr + b_index[:, None] * b_strides[0] + out_d[None, :] * b_strides[1],
            mask=b_valid[:, None] & out_valid[None, :],
            other=0.0,
        )
        grad = dot(d_logits.to(b_out.dtype), b_out, grad)
        if scale_grad_partials_ptr is not None:
            scale_grad += tl.sum(d_logits * raw, axis=1)
    tl.store(
        grad_a_ptr + a_index[:, None] * grad_strides[0] + out_d[None, :] * grad_strides[1],
        (grad * scale).to(grad_a_ptr.dtype.element_ty),
        mask=a_valid[:, None] & out_valid[None, :],
    )
    if scale_grad_partials_ptr is not None:
        if tl.program_id(1) == 0:
            tl.store(scale_grad_partials_ptr + tl.program_id(0), tl.sum(scale_grad, axis=0))


def side_grad(a, b, scale, positives, transpose: bool, a_stats, b_stats, want_scale_grad: bool):
    """(grad of ``a``, summed scale-gradient partials or None); stats are (lse_all, lse_positive, weight)."""
    n_a, n_b, dim = a.shape[0], b.shape[0], a.shape[1]
    grad_a = torch.zeros_like(a)
    blocks = block_sizes(dim)
    a_blocks = triton.cdiv(n_a, blocks["BLOCK_A"])
    partials = torch.zeros((max(a_blocks, 1),), device=a.device, dtype=torch.float32) if want_scale_grad else None
    if n_a and n_b:
        with on_device(a):
            _nce_grad_kernel[(a_blocks, triton.cdiv(dim, blocks["BLOCK_OUT"]))](
                a, b, scale, positives, a.stride(), b.stride(), positive_strides(positives, transpose),
                *a_stats, *b_stats,
                grad_a, grad_a.stride(), partials,
                n_a, n_b, dim,
                **blocks,
                # The (BLOCK_A, BLOCK_OUT) fp32 accumulator wants the registers of 8 warps, and two pipeline
                # stages keep the three operand tiles of fp32 inputs within shared memory.
                num_warps=8, num_stages=2,
            )  # fmt: skip
    return grad_a, partials.sum() if want_scale_grad else None
