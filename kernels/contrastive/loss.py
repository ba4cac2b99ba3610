"""The contrastive loss as one op: the autograd Function over the forward and backward kernels, the plain-torch
reference (the CPU path and the kernels' oracle), and :func:`contrastive_loss`, which chooses between them."""

from __future__ import annotations

from typing import NamedTuple

import torch

from mmodal.kernels.contrastive.backward import side_grad
from mmodal.kernels.contrastive.forward import MAX_HARD_NEGATIVES, side_stats
from mmodal.kernels.dispatch import use_triton
from mmodal.kernels.launch import check_kernel_dtype, check_one_device


class ContrastiveOutput(NamedTuple):
    loss: torch.Tensor  # 0-d
    hard_negatives: torch.Tensor | None  # (R, k) long, best first; -1 where a row has fewer than k negatives


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
    check_one_device("rows, cols, scale and positives", rows, cols, scale, positives)


def _side_loss(lse_all: torch.Tensor, lse_positive: torch.Tensor):
    """(mean -log positive mass over items with a positive, how many such items) — no host sync."""
    has_positive = lse_positive > float("-inf")
    count = has_positive.sum().to(torch.float32)
    total = torch.where(has_positive, lse_all - lse_positive, 0.0).sum()
    return total / count.clamp(min=1.0), has_positive, count


class _ContrastiveLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, cols, scale, positives, hard_negatives: int):
        check_kernel_dtype("rows and cols", rows, cols)
        scale32 = scale.detach().to(torch.float32).reshape(1)
        # A bool tensor reinterpreted as bytes: the same memory, which Triton loads as plain 8-bit integers.
        positive_bytes = None if positives is None else positives.view(torch.uint8)
        row_lse_all, row_lse_positive, hard_values, hard_index = side_stats(
            rows, cols, scale32, positive_bytes, False, hard_negatives
        )
        col_lse_all, col_lse_positive, _, _ = side_stats(cols, rows, scale32, positive_bytes, True, 0)
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
            grad_rows, grad_scale = side_grad(
                rows, cols, scale32, positive_bytes, False, row_stats, col_stats, want_scale
            )
        if want_cols:
            grad_cols, _ = side_grad(cols, rows, scale32, positive_bytes, True, col_stats, row_stats, False)
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


def contrastive_loss_reference(rows, cols, scale, positives=None, hard_negatives: int = 0) -> ContrastiveOutput:
    """The plain-torch path and the kernel's oracle (as :func:`contrastive_loss`): materialises the (R, C)
    logits."""
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
