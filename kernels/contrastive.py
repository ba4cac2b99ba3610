"""Symmetric multi-positive InfoNCE between two sets of embeddings, the towers' contrastive objective.

For ``rows`` (R, D), ``cols`` (C, D), a scalar ``scale`` and a boolean ``positives`` (R, C), the logits are
``s = scale * rows @ cols.T`` and the loss is ``0.5 * (row_nce + col_nce)``: ``row_nce`` is the mean, over the
rows with at least one positive, of ``-log(sum of the row's softmax mass on its positive columns)``, and
``col_nce`` the same down the columns. ``positives=None`` means the diagonal (R == C): plain CLIP InfoNCE.
Optionally each row's ``hard_negatives`` highest-logit non-positive columns come back as indices.

The Triton kernels never hold the (R, C) logits or softmax in memory: the forward pass streams column blocks
past each block of rows, keeping an online logsumexp over all columns and one over the positive columns (and a
running top-k of the negatives), then runs again with rows and columns swapped. Only those per-row and
per-column logsumexps are kept for the backward pass, which recomputes each logit tile to form its gradient.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch

from kernels.dispatch import HAS_TRITON, interpreting, use_triton

MAX_HARD_NEGATIVES = 16  # the running top-k lives in registers, one slot per kept negative

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _raw_logit_tile(
        a_ptr,
        b_ptr,
        a_index,
        b_index,
        a_valid,
        b_valid,
        dim,
        stride_a_item,
        stride_a_dim,
        stride_b_item,
        stride_b_dim,
        BLOCK_A: tl.constexpr,
        BLOCK_B: tl.constexpr,
        BLOCK_D: tl.constexpr,
        INPUT_PRECISION: tl.constexpr,
    ):
        """(BLOCK_A, BLOCK_B) dot products a_i · b_j in fp32, zero where either side is out of range."""
        acc = tl.zeros((BLOCK_A, BLOCK_B), dtype=tl.float32)
        for d_start in range(0, dim, BLOCK_D):
            d = d_start + tl.arange(0, BLOCK_D)
            d_valid = d < dim
            a = tl.load(
                a_ptr + a_index[:, None] * stride_a_item + d[None, :] * stride_a_dim,
                mask=a_valid[:, None] & d_valid[None, :],
                other=0.0,
            )
            b = tl.load(
                b_ptr + b_index[:, None] * stride_b_item + d[None, :] * stride_b_dim,
                mask=b_valid[:, None] & d_valid[None, :],
                other=0.0,
            )
            acc = tl.dot(a, tl.trans(b), acc, input_precision=INPUT_PRECISION)
        return acc

    @triton.jit
    def _positive_tile(
        positives_ptr,
        a_index,
        b_index,
        a_valid,
        b_valid,
        stride_pos_a,
        stride_pos_b,
        DIAGONAL: tl.constexpr,
    ):
        valid = a_valid[:, None] & b_valid[None, :]
        if DIAGONAL:
            positive = a_index[:, None] == b_index[None, :]
        else:
            # One byte per entry, read straight from the caller's bool matrix (or its transpose, by strides).
            offsets = a_index.to(tl.int64)[:, None] * stride_pos_a + b_index.to(tl.int64)[None, :] * stride_pos_b
            positive = tl.load(positives_ptr + offsets, mask=valid, other=0) != 0
        return positive & valid

    @triton.jit
    def _online_logsumexp(running_max, running_sum, tile):
        """Folds a tile (entries to leave out at -inf) into a per-row logsumexp kept as max and scaled sum."""
        new_max = tl.maximum(running_max, tl.max(tile, axis=1))
        # A row that has seen only -inf so far keeps sum 0; shifting by 0 instead of -inf avoids inf - inf.
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        running_sum = running_sum * tl.exp(running_max - shift) + tl.sum(tl.exp(tile - shift[:, None]), axis=1)
        return new_max, running_sum

    @triton.jit
    def _nce_stats_kernel(
        a_ptr,
        b_ptr,
        scale_ptr,
        positives_ptr,
        lse_all_ptr,
        lse_positive_ptr,
        hard_values_ptr,
        hard_index_ptr,
        n_a,
        n_b,
        dim,
        stride_a_item,
        stride_a_dim,
        stride_b_item,
        stride_b_dim,
        stride_pos_a,
        stride_pos_b,
        DIAGONAL: tl.constexpr,
        HARD_K: tl.constexpr,
        HARD_K_PAD: tl.constexpr,
        BLOCK_A: tl.constexpr,
        BLOCK_B: tl.constexpr,
        BLOCK_D: tl.constexpr,
        INPUT_PRECISION: tl.constexpr,
    ):
        """Per item of ``a``: logsumexp of its logits against all of ``b`` and against its positives only,
        and (HARD_K > 0) its HARD_K highest-logit non-positive items of ``b``."""
        a_index = tl.program_id(0) * BLOCK_A + tl.arange(0, BLOCK_A)
        a_valid = a_index < n_a
        scale = tl.load(scale_ptr)
        max_all = tl.full((BLOCK_A,), float("-inf"), dtype=tl.float32)
        sum_all = tl.zeros((BLOCK_A,), dtype=tl.float32)
        max_positive = tl.full((BLOCK_A,), float("-inf"), dtype=tl.float32)
        sum_positive = tl.zeros((BLOCK_A,), dtype=tl.float32)
        # Padding slots hold +inf so that the slot to replace, the smallest, is always a real one.
        slot = tl.arange(0, HARD_K_PAD)
        hard_values = tl.where(slot[None, :] < HARD_K, float("-inf"), float("inf")) + tl.zeros(
            (BLOCK_A, HARD_K_PAD), dtype=tl.float32
        )
        hard_index = tl.full((BLOCK_A, HARD_K_PAD), -1, dtype=tl.int32)
        for b_start in range(0, n_b, BLOCK_B):
            b_local = tl.arange(0, BLOCK_B)
            b_index = b_start + b_local
            b_valid = b_index < n_b
            raw = _raw_logit_tile(
                a_ptr,
                b_ptr,
                a_index,
                b_index,
                a_valid,
                b_valid,
                dim,
                stride_a_item,
                stride_a_dim,
                stride_b_item,
                stride_b_dim,
                BLOCK_A,
                BLOCK_B,
                BLOCK_D,
                INPUT_PRECISION,
            )
            logits = tl.where(b_valid[None, :], raw * scale, float("-inf"))
            positive = _positive_tile(
                positives_ptr, a_index, b_index, a_valid, b_valid, stride_pos_a, stride_pos_b, DIAGONAL
            )
            max_all, sum_all = _online_logsumexp(max_all, sum_all, logits)
            max_positive, sum_positive = _online_logsumexp(
                max_positive, sum_positive, tl.where(positive, logits, float("-inf"))
            )
            if HARD_K > 0:
                # Take the tile's best negatives one at a time, each replacing the weakest kept one if better.
                candidates = tl.where(positive, float("-inf"), logits)
                for _ in tl.static_range(HARD_K):
                    best, best_local = tl.max(candidates, axis=1, return_indices=True)
                    weakest, weakest_slot = tl.min(hard_values, axis=1, return_indices=True)
                    replace = (slot[None, :] == weakest_slot[:, None]) & (best > weakest)[:, None]
                    hard_values = tl.where(replace, best[:, None], hard_values)
                    hard_index = tl.where(replace, (b_start + best_local)[:, None], hard_index)
                    candidates = tl.where(b_local[None, :] == best_local[:, None], float("-inf"), candidates)
        # An empty sum comes with max -inf, so log(1) leaves the logsumexp at -inf without taking log(0).
        tl.store(lse_all_ptr + a_index, max_all + tl.log(tl.where(sum_all > 0, sum_all, 1.0)), mask=a_valid)
        lse_positive = max_positive + tl.log(tl.where(sum_positive > 0, sum_positive, 1.0))
        tl.store(lse_positive_ptr + a_index, lse_positive, mask=a_valid)
        if HARD_K > 0:
            offsets = a_index[:, None] * HARD_K + slot[None, :]
            keep = a_valid[:, None] & (slot[None, :] < HARD_K)
            tl.store(hard_values_ptr + offsets, hard_values, mask=keep)
            tl.store(hard_index_ptr + offsets, hard_index, mask=keep)

    @triton.jit
    def _nce_grad_kernel(
        a_ptr,
        b_ptr,
        scale_ptr,
        positives_ptr,
        a_lse_all_ptr,
        a_lse_positive_ptr,
        a_weight_ptr,
        b_lse_all_ptr,
        b_lse_positive_ptr,
        b_weight_ptr,
        grad_a_ptr,
        scale_grad_partials_ptr,
        n_a,
        n_b,
        dim,
        stride_a_item,
        stride_a_dim,
        stride_b_item,
        stride_b_dim,
        stride_pos_a,
        stride_pos_b,
        stride_grad_item,
        stride_grad_dim,
        DIAGONAL: tl.constexpr,
        COMPUTE_SCALE_GRAD: tl.constexpr,
        BLOCK_A: tl.constexpr,
        BLOCK_B: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_OUT: tl.constexpr,
        INPUT_PRECISION: tl.constexpr,
    ):
        """grad_a = scale * dS @ b for one block of ``a`` and one block of feature columns, where
        dS_ij = w_a_i (p_a_ij - q_a_ij) + w_b_j (p_b_ij - q_b_ij): p the softmax mass along that side, q the
        same among positives, w the side's loss weight (0 for items without a positive). The same kernel
        with a and b swapped gives grad_b, as dS is built symmetrically."""
        a_block = tl.program_id(0)
        out_block = tl.program_id(1)
        a_index = a_block * BLOCK_A + tl.arange(0, BLOCK_A)
        a_valid = a_index < n_a
        out_d = out_block * BLOCK_OUT + tl.arange(0, BLOCK_OUT)
        out_valid = out_d < dim
        scale = tl.load(scale_ptr)
        a_lse_all = tl.load(a_lse_all_ptr + a_index, mask=a_valid, other=0.0)
        a_lse_positive = tl.load(a_lse_positive_ptr + a_index, mask=a_valid, other=0.0)
        a_weight = tl.load(a_weight_ptr + a_index, mask=a_valid, other=0.0)
        grad = tl.zeros((BLOCK_A, BLOCK_OUT), dtype=tl.float32)
        scale_grad = tl.zeros((BLOCK_A,), dtype=tl.float32)
        for b_start in range(0, n_b, BLOCK_B):
            b_index = b_start + tl.arange(0, BLOCK_B)
            b_valid = b_index < n_b
            raw = _raw_logit_tile(
                a_ptr,
                b_ptr,
                a_index,
                b_index,
                a_valid,
                b_valid,
                dim,
                stride_a_item,
                stride_a_dim,
                stride_b_item,
                stride_b_dim,
                BLOCK_A,
                BLOCK_B,
                BLOCK_D,
                INPUT_PRECISION,
            )
            logits = raw * scale
            positive = _positive_tile(
                positives_ptr, a_index, b_index, a_valid, b_valid, stride_pos_a, stride_pos_b, DIAGONAL
            )
            b_lse_all = tl.load(b_lse_all_ptr + b_index, mask=b_valid, other=0.0)
            b_lse_positive = tl.load(b_lse_positive_ptr + b_index, mask=b_valid, other=0.0)
            b_weight = tl.load(b_weight_ptr + b_index, mask=b_valid, other=0.0)
            # Off the positives q is 0; the where also keeps exp(s - (-inf)) of positive-less items out.
            a_side = tl.exp(logits - a_lse_all[:, None]) - tl.where(
                positive, tl.exp(logits - a_lse_positive[:, None]), 0.0
            )
            b_side = tl.exp(logits - b_lse_all[None, :]) - tl.where(
                positive, tl.exp(logits - b_lse_positive[None, :]), 0.0
            )
            d_logits = a_weight[:, None] * a_side + b_weight[None, :] * b_side
            d_logits = tl.where(a_valid[:, None] & b_valid[None, :], d_logits, 0.0)
            b_out = tl.load(
                b_ptr + b_index[:, None] * stride_b_item + out_d[None, :] * stride_b_dim,
                mask=b_valid[:, None] & out_valid[None, :],
                other=0.0,
            )
            grad = tl.dot(d_logits.to(b_out.dtype), b_out, grad, input_precision=INPUT_PRECISION)
            if COMPUTE_SCALE_GRAD:
                scale_grad += tl.sum(d_logits * raw, axis=1)
        tl.store(
            grad_a_ptr + a_index[:, None] * stride_grad_item + out_d[None, :] * stride_grad_dim,
            (grad * scale).to(grad_a_ptr.dtype.element_ty),
            mask=a_valid[:, None] & out_valid[None, :],
        )
        if COMPUTE_SCALE_GRAD:
            if out_block == 0:
                tl.store(scale_grad_partials_ptr + a_block, tl.sum(scale_grad, axis=0))


class ContrastiveOutput(NamedTuple):
    loss: torch.Tensor  # 0-d
    hard_negatives: torch.Tensor | None  # (R, k) long, best first; -1 where a row has fewer than k negatives


KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check_arguments(rows, cols, scale, positives, hard_negatives: int) -> None:
    if not (isinstance(rows, torch.Tensor) and isinstance(cols, torch.Tensor)):
        raise ValueError("rows and cols must be tensors")
    if rows.dim() != 2 or cols.dim() != 2 or rows.shape[1] != cols.shape[1]:
        raise ValueError(f"rows (R, D) and cols (C, D) must share D, got {tuple(rows.shape)} and {tuple(cols.shape)}")
    if not isinstance(scale, torch.Tensor) or scale.dim() != 0 or not scale.is_floating_point():
        raise ValueError(f"scale must be a 0-d floating-point tensor, got {scale!r}")
    n_rows, n_cols = rows.shape[0], cols.shape[0]
    if positives is None:
        if n_rows != n_cols:
            raise ValueError(f"positives=None means the diagonal, which needs R == C; got {n_rows} != {n_cols}")
    elif positives.shape != (n_rows, n_cols) or positives.dtype != torch.bool:
        raise ValueError(
            f"positives must be a ({n_rows}, {n_cols}) bool tensor, got {tuple(positives.shape)} {positives.dtype}"
        )
    if isinstance(hard_negatives, bool) or not isinstance(hard_negatives, int):
        raise ValueError(f"hard_negatives must be an int, got {hard_negatives!r}")
    if not 0 <= hard_negatives <= min(MAX_HARD_NEGATIVES, n_cols):
        raise ValueError(f"hard_negatives must be in 0..{min(MAX_HARD_NEGATIVES, n_cols)}, got {hard_negatives}")
    devices = {t.device for t in (rows, cols, scale, positives) if t is not None}
    if len(devices) != 1:
        raise ValueError(f"rows, cols, scale and positives must be on one device, got {sorted(map(str, devices))}")


def _check_kernel_inputs(rows: torch.Tensor, cols: torch.Tensor) -> None:
    if rows.dtype != cols.dtype or rows.dtype not in KERNEL_DTYPES:
        raise ValueError(f"rows and cols must share one of fp32, fp16, bf16; got {rows.dtype} and {cols.dtype}")


def _block_sizes(dim: int) -> dict[str, int]:
    if interpreting():
        # The interpreter pays per operation, not per element, and tests use tiny shapes: small blocks still
        # run every multi-block and masked-edge path.
        return {"BLOCK_A": 16, "BLOCK_B": 16, "BLOCK_D": 16, "BLOCK_OUT": 16}
    return {
        "BLOCK_A": 64,
        "BLOCK_B": 64,
        "BLOCK_D": max(16, min(64, triton.next_power_of_2(dim))),
        "BLOCK_OUT": max(16, min(128, triton.next_power_of_2(dim))),
    }


def _on_device(tensor: torch.Tensor):
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def _input_precision(dtype: torch.dtype) -> str:
    # fp32 products in full precision, so that the kernel agrees with torch's fp32 matmul.
    return "ieee" if dtype == torch.float32 else "tf32"


def _side_stats(a, b, scale, positives, transpose: bool, hard_k: int):
    """Logsumexps (all, positive) for each item of ``a`` against ``b``, and its top ``hard_k`` negatives."""
    n_a, n_b, dim = a.shape[0], b.shape[0], a.shape[1]
    lse_all = torch.full((n_a,), float("-inf"), device=a.device, dtype=torch.float32)
    lse_positive = torch.full_like(lse_all, float("-inf"))
    hard_values = torch.empty((n_a, hard_k), device=a.device, dtype=torch.float32)
    hard_index = torch.empty((n_a, hard_k), device=a.device, dtype=torch.int32)
    if n_a == 0 or n_b == 0:
        hard_values.fill_(float("-inf"))
        hard_index.fill_(-1)
        return lse_all, lse_positive, hard_values, hard_index
    pos_strides = (0, 0) if positives is None else positives.stride()[:: -1 if transpose else 1]
    blocks = _block_sizes(dim)
    with _on_device(a):
        _nce_stats_kernel[(triton.cdiv(n_a, blocks["BLOCK_A"]),)](
            a,
            b,
            scale,
            a if positives is None else positives,
            lse_all,
            lse_positive,
            hard_values,
            hard_index,
            n_a,
            n_b,
            dim,
            a.stride(0),
            a.stride(1),
            b.stride(0),
            b.stride(1),
            pos_strides[0],
            pos_strides[1],
            DIAGONAL=positives is None,
            HARD_K=hard_k,
            HARD_K_PAD=triton.next_power_of_2(max(hard_k, 1)),
            BLOCK_A=blocks["BLOCK_A"],
            BLOCK_B=blocks["BLOCK_B"],
            BLOCK_D=blocks["BLOCK_D"],
            INPUT_PRECISION=_input_precision(a.dtype),
            num_warps=4,
        )
    return lse_all, lse_positive, hard_values, hard_index


def _side_grad(a, b, scale, positives, transpose: bool, a_stats, b_stats, want_scale_grad: bool):
    """(grad of ``a``, summed scale-gradient partials or None); stats are (lse_all, lse_positive, weight)."""
    n_a, n_b, dim = a.shape[0], b.shape[0], a.shape[1]
    grad_a = torch.zeros_like(a)
    blocks = _block_sizes(dim)
    a_blocks = triton.cdiv(n_a, blocks["BLOCK_A"])
    partials = torch.zeros((max(a_blocks, 1),), device=a.device, dtype=torch.float32)
    if n_a and n_b:
        pos_strides = (0, 0) if positives is None else positives.stride()[:: -1 if transpose else 1]
        with _on_device(a):
            _nce_grad_kernel[(a_blocks, triton.cdiv(dim, blocks["BLOCK_OUT"]))](
                a,
                b,
                scale,
                a if positives is None else positives,
                *a_stats,
                *b_stats,
                grad_a,
                partials,
                n_a,
                n_b,
                dim,
                a.stride(0),
                a.stride(1),
                b.stride(0),
                b.stride(1),
                pos_strides[0],
                pos_strides[1],
                grad_a.stride(0),
                grad_a.stride(1),
                DIAGONAL=positives is None,
                COMPUTE_SCALE_GRAD=want_scale_grad,
                INPUT_PRECISION=_input_precision(a.dtype),
                **blocks,
                # The (BLOCK_A, BLOCK_OUT) fp32 accumulator wants the registers of 8 warps, and two pipeline
                # stages keep the three operand tiles of fp32 inputs within shared memory.
                num_warps=8,
                num_stages=2,
            )
    return grad_a, partials.sum() if want_scale_grad else None


def _side_loss(lse_all: torch.Tensor, lse_positive: torch.Tensor):
    """(mean -log positive mass over items with a positive, how many such items) — no host sync."""
    has_positive = lse_positive > float("-inf")
    count = has_positive.sum().to(torch.float32)
    total = torch.where(has_positive, lse_all - lse_positive, 0.0).sum()
    return total / count.clamp(min=1.0), has_positive, count


class _ContrastiveLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, cols, scale, positives, hard_negatives: int):
        _check_kernel_inputs(rows, cols)
        scale32 = scale.detach().to(torch.float32).reshape(1)
        # A bool tensor reinterpreted as bytes: the same memory, which Triton loads as plain 8-bit integers.
        positive_bytes = None if positives is None else positives.view(torch.uint8)
        row_lse_all, row_lse_positive, hard_values, hard_index = _side_stats(
            rows, cols, scale32, positive_bytes, False, hard_negatives
        )
        col_lse_all, col_lse_positive, _, _ = _side_stats(cols, rows, scale32, positive_bytes, True, 0)
        row_loss, row_has, row_count = _side_loss(row_lse_all, row_lse_positive)
        col_loss, col_has, col_count = _side_loss(col_lse_all, col_lse_positive)
        loss = 0.5 * (row_loss + col_loss)
        ctx.save_for_backward(
            rows, cols, scale32, positive_bytes, row_lse_all, row_lse_positive, col_lse_all, col_lse_positive
        )
        ctx.side_weights = (row_has, row_count, col_has, col_count)
        ctx.scale_dtype = scale.dtype
        order = hard_values.argsort(dim=1, descending=True)
        hard = hard_index.long().gather(1, order)
        ctx.mark_non_differentiable(hard)
        return loss, hard

    @staticmethod
    def backward(ctx, grad_loss, _grad_hard):
        rows, cols, scale32, positive_bytes, row_lse_all, row_lse_positive, col_lse_all, col_lse_positive = (
            ctx.saved_tensors
        )
        row_has, row_count, col_has, col_count = ctx.side_weights
        grad_loss = grad_loss.to(torch.float32)
        row_weight = torch.where(row_has, 0.5 * grad_loss / row_count.clamp(min=1.0), 0.0)
        col_weight = torch.where(col_has, 0.5 * grad_loss / col_count.clamp(min=1.0), 0.0)
        row_stats = (row_lse_all, row_lse_positive, row_weight)
        col_stats = (col_lse_all, col_lse_positive, col_weight)
        want_rows, want_cols, want_scale = ctx.needs_input_grad[:3]
        grad_rows = grad_cols = grad_scale = None
        if want_rows or want_scale:
            grad_rows, grad_scale = _side_grad(
                rows, cols, scale32, positive_bytes, False, row_stats, col_stats, want_scale
            )
        if want_cols:
            grad_cols, _ = _side_grad(cols, rows, scale32, positive_bytes, True, col_stats, row_stats, False)
        if grad_scale is not None:
            grad_scale = grad_scale.to(ctx.scale_dtype)
        return grad_rows if want_rows else None, grad_cols, grad_scale, None, None


def multi_positive_nce(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -log(sum of positive probabilities); rows without a positive are skipped.

    logits (R, C) and positives (R, C) bool. With one positive per row this is plain InfoNCE.
    """
    has_positive = positives.any(dim=1)
    if not has_positive.any():
        return logits.new_zeros(())
    log_probs = logits.log_softmax(dim=1)
    positive_mass = torch.logsumexp(log_probs.masked_fill(~positives, float("-inf")), dim=1)
    return -positive_mass[has_positive].mean()


def contrastive_loss_reference(
    rows: torch.Tensor,
    cols: torch.Tensor,
    scale: torch.Tensor,
    positives: torch.Tensor | None = None,
    hard_negatives: int = 0,
) -> ContrastiveOutput:
    """The plain-torch path and the kernel's oracle: materialises the (R, C) logits."""
    _check_arguments(rows, cols, scale, positives, hard_negatives)
    logits = scale * (rows @ cols.t())
    if positives is None:
        positives = torch.eye(rows.shape[0], dtype=torch.bool, device=rows.device)
    loss = 0.5 * (multi_positive_nce(logits, positives) + multi_positive_nce(logits.t(), positives.t()))
    hard = None
    if hard_negatives:
        with torch.no_grad():
            values, hard = logits.masked_fill(positives, float("-inf")).topk(hard_negatives, dim=1)
            hard = hard.masked_fill(values == float("-inf"), -1)
    return ContrastiveOutput(loss, hard)


def _kernel_inputs(rows: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and cols in the dtype torch's own matmul would use here: autocast's, else the promoted one."""
    device_type = rows.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
    else:
        dtype = torch.promote_types(rows.dtype, cols.dtype)
    return rows.to(dtype), cols.to(dtype)


def contrastive_loss(
    rows: torch.Tensor,
    cols: torch.Tensor,
    scale: torch.Tensor,
    positives: torch.Tensor | None = None,
    hard_negatives: int = 0,
) -> ContrastiveOutput:
    """``0.5 * (row-wise + column-wise multi-positive InfoNCE)`` of ``scale * rows @ cols.T``.

    rows (R, D), cols (C, D), scale a 0-d tensor (it gets a gradient too), positives (R, C) bool or None for
    the diagonal. ``hard_negatives=k`` (at most 16) also returns each row's k highest-logit non-positive
    columns, best first, without gradient.
    """
    _check_arguments(rows, cols, scale, positives, hard_negatives)
    if not use_triton(rows, cols, scale, positives):
        return contrastive_loss_reference(rows, cols, scale, positives, hard_negatives)
    loss, hard = _ContrastiveLossFunction.apply(*_kernel_inputs(rows, cols), scale, positives, hard_negatives)
    return ContrastiveOutput(loss, hard if hard_negatives else None)
