"""Moving tokens into the rows grouped by expert and back.

:func:`permute_tokens` copies each (token, choice) into its row of the buffer; :func:`unpermute_tokens` gives each
token the weighted sum of its rows, gathered per token so that no atomics are needed. Each is the other's
adjoint: the backward of permute is an unweighted un-permute, which the un-permute kernel runs, and the backward
of un-permute is a weighted permute (plus d weights), which has its own kernel.

The gathering kernel comes first, as both ops run it; then each op, kernel → launcher → autograd Function →
reference → public function."""

from __future__ import annotations

import torch

from mmodal.kernels.dispatch import tl, triton, use_triton
from mmodal.kernels.launch import block_size, program_block
from mmodal.kernels.moe.layout import TOKEN_BLOCK, ExpertLayout, check_float, check_on_layout_device

# ----------------------------------------------------------------------------------------------- gathering


@triton.jit
def _choice_row(slot_rows_ptr, tokens, token_ok, choice, TOP_K: tl.constexpr):
    """The row of each token's ``choice``-th expert (0 where it has none) and whether it has one."""
    row = tl.load(slot_rows_ptr + tokens * TOP_K + choice, mask=token_ok, other=-1)
    return tl.maximum(row, 0).to(tl.int64), row >= 0


@triton.jit
def _gather_tokens_kernel(
    rows_ptr, stride_rr, stride_rh, weights_ptr, stride_wt, stride_wk, slot_rows_ptr,
    out_ptr, stride_ot,
    n_tokens, n_cols,
    TOP_K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    """out[t] = sum over t's choices j of weight[t, j] * rows[row of (t, j)], unweighted without weights."""
    tokens, token_ok = program_block(0, n_tokens, BLOCK_T)
    cols, col_ok = program_block(1, n_cols, BLOCK_H)
    acc = tl.zeros((BLOCK_T, BLOCK_H), dtype=tl.float32)
    for j in tl.static_range(TOP_K):
        row, dispatched = _choice_row(slot_rows_ptr, tokens, token_ok, j, TOP_K)
        values = tl.load(
            rows_ptr + row[:, None] * stride_rr + cols[None, :] * stride_rh,
            mask=dispatched[:, None] & col_ok[None, :],
            other=0.0,
        ).to(tl.float32)
        if weights_ptr is not None:
            weight = tl.load(weights_ptr + tokens * stride_wt + j * stride_wk, mask=dispatched, other=0.0)
            values = weight.to(tl.float32)[:, None] * values
        acc += values
    tl.store(
        out_ptr + tokens[:, None] * stride_ot + cols[None, :],
        acc.to(out_ptr.dtype.element_ty),
        mask=token_ok[:, None] & col_ok[None, :],
    )


def _gather_tokens(rows: torch.Tensor, weights: torch.Tensor | None, layout: ExpertLayout) -> torch.Tensor:
    """Each token's rows summed, with its weights when given."""
    n_tokens, n_cols = layout.slot_rows.shape[0], rows.shape[1]
    out = torch.empty(n_tokens, n_cols, device=rows.device, dtype=rows.dtype)
    if n_tokens == 0 or n_cols == 0:
        return out
    block_h = block_size(n_cols, 128)
    weight_strides = (0, 0) if weights is None else weights.stride()
    _gather_tokens_kernel[(triton.cdiv(n_tokens, TOKEN_BLOCK), triton.cdiv(n_cols, block_h))](
        rows, *rows.stride(), weights, *weight_strides, layout.slot_rows,
        out, out.stride(0),
        n_tokens, n_cols,
        TOP_K=layout.top_k, BLOCK_T=TOKEN_BLOCK, BLOCK_H=block_h,
    )  # fmt: skip
    return out


# ----------------------------------------------------------------------------------------------- permute


@triton.jit
def _permute_kernel(
    x_ptr, stride_xt, stride_xh, row_slots_ptr,
    out_ptr, stride_or,
    n_rows, n_cols,
    TOP_K: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    rows, row_ok = program_block(0, n_rows, BLOCK_R)
    slot = tl.load(row_slots_ptr + rows, mask=row_ok, other=-1)
    source = (tl.maximum(slot, 0) // TOP_K).to(tl.int64)
    cols, col_ok = program_block(1, n_cols, BLOCK_H)
    # Padding rows (slot -1) come out as zeros, so they add nothing to the products downstream.
    values = tl.load(
        x_ptr + source[:, None] * stride_xt + cols[None, :] * stride_xh,
        mask=(slot >= 0)[:, None] & col_ok[None, :],
        other=0.0,
    )
    tl.store(out_ptr + rows[:, None] * stride_or + cols[None, :], values, mask=row_ok[:, None] & col_ok[None, :])


def _permute_forward(x: torch.Tensor, layout: ExpertLayout) -> torch.Tensor:
    check_float("tokens", x, 2)
    check_on_layout_device(layout, x)
    if x.shape[0] != layout.slot_rows.shape[0]:
        raise ValueError(f"{x.shape[0]} tokens, but the layout was built for {layout.slot_rows.shape[0]}")
    n_cols = x.shape[1]
    out = torch.empty(layout.n_rows, n_cols, device=x.device, dtype=x.dtype)
    if layout.n_rows == 0 or n_cols == 0:
        return out
    block_r, block_h = 16, block_size(n_cols, 128)
    _permute_kernel[(triton.cdiv(layout.n_rows, block_r), triton.cdiv(n_cols, block_h))](
        x, *x.stride(), layout.row_slots,
        out, out.stride(0),
        layout.n_rows, n_cols,
        TOP_K=layout.top_k, BLOCK_R=block_r, BLOCK_H=block_h,
    )  # fmt: skip
    return out


class PermuteTokensFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, layout: ExpertLayout):
        ctx.layout = layout
        return _permute_forward(x, layout)

    @staticmethod
    def backward(ctx, grad_rows):
        return _gather_tokens(grad_rows, None, ctx.layout), None


def permute_tokens_reference(x: torch.Tensor, layout: ExpertLayout) -> torch.Tensor:
    slots = layout.row_slots.long()
    dispatched = (slots >= 0)[:, None]
    return torch.where(dispatched, x[slots.clamp_min(0) // layout.top_k], x.new_zeros(()))


def permute_tokens(x: torch.Tensor, layout: ExpertLayout) -> torch.Tensor:
    """Tokens (N, H) → rows (R, H) grouped by expert as ``layout`` says, padding rows zero."""
    if use_triton(x):
        return PermuteTokensFunction.apply(x, layout)
    return permute_tokens_reference(x, layout)


# ----------------------------------------------------------------------------------------------- un-permute


@triton.jit
def _unpermute_backward_kernel(
    grad_out_ptr, stride_gt, stride_gh, y_ptr, stride_yr, stride_yh, weights_ptr, stride_wt, stride_wk, slot_rows_ptr,
    grad_y_ptr, stride_dyr, grad_weights_ptr, stride_dwt,
    n_tokens, n_cols,
    TOP_K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    tokens, token_ok = program_block(0, n_tokens, BLOCK_T)
    for j in tl.static_range(TOP_K):
        row, dispatched = _choice_row(slot_rows_ptr, tokens, token_ok, j, TOP_K)
        weight = tl.load(weights_ptr + tokens * stride_wt + j * stride_wk, mask=dispatched, other=0.0)
        grad_weight = tl.zeros((BLOCK_T,), dtype=tl.float32)
        for start in range(0, n_cols, BLOCK_H):
            cols = start + tl.arange(0, BLOCK_H)
            ok = dispatched[:, None] & (cols < n_cols)[None, :]
            grad = tl.load(
                grad_out_ptr + tokens[:, None] * stride_gt + cols[None, :] * stride_gh, mask=ok, other=0.0
            ).to(tl.float32)
            values = tl.load(y_ptr + row[:, None] * stride_yr + cols[None, :] * stride_yh, mask=ok, other=0.0)
            grad_weight += tl.sum(grad * values.to(tl.float32), axis=1)
            # Each permuted row belongs to one (token, choice), so these stores never collide.
            tl.store(
                grad_y_ptr + row[:, None] * stride_dyr + cols[None, :],
                (weight.to(tl.float32)[:, None] * grad).to(grad_y_ptr.dtype.element_ty),
                mask=ok,
            )
        tl.store(
            grad_weights_ptr + tokens * stride_dwt + j,
            grad_weight.to(grad_weights_ptr.dtype.element_ty),
            mask=token_ok,
        )


def _unpermute_backward(
    grad_out: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, layout: ExpertLayout
) -> tuple[torch.Tensor, torch.Tensor]:
    n_tokens, n_cols = grad_out.shape
    # Padding rows feed no token, so their gradient stays zero.
    grad_y = torch.zeros_like(y)
    grad_weights = torch.empty(n_tokens, layout.top_k, device=y.device, dtype=weights.dtype)
    if n_tokens == 0:
        return grad_y, grad_weights
    _unpermute_backward_kernel[(triton.cdiv(n_tokens, TOKEN_BLOCK),)](
        grad_out, *grad_out.stride(), y, *y.stride(), weights, *weights.stride(), layout.slot_rows,
        grad_y, grad_y.stride(0), grad_weights, grad_weights.stride(0),
        n_tokens, n_cols,
        TOP_K=layout.top_k, BLOCK_T=TOKEN_BLOCK, BLOCK_H=block_size(n_cols, 128),
    )  # fmt: skip
    return grad_y, grad_weights


class UnpermuteTokensFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y: torch.Tensor, weights: torch.Tensor, layout: ExpertLayout):
        check_float("expert outputs", y, 2)
        check_float("routing weights", weights, 2)
        check_on_layout_device(layout, y, weights)
        if y.shape[0] != layout.n_rows:
            raise ValueError(f"expert outputs have {y.shape[0]} rows, the layout {layout.n_rows}")
        if weights.shape != layout.slot_rows.shape:
            raise ValueError(f"routing weights must be {tuple(layout.slot_rows.shape)}, got {tuple(weights.shape)}")
        ctx.save_for_backward(y, weights)
        ctx.layout = layout
        return _gather_tokens(y, weights, layout)

    @staticmethod
    def backward(ctx, grad_out):
        y, weights = ctx.saved_tensors
        grad_y, grad_weights = _unpermute_backward(grad_out, y, weights, ctx.layout)
        return grad_y, grad_weights, None


def unpermute_tokens_reference(y: torch.Tensor, weights: torch.Tensor, layout: ExpertLayout) -> torch.Tensor:
    rows = layout.slot_rows.long()
    dispatched = rows >= 0
    gathered = y[rows.clamp_min(0)]  # (N, k, H)
    return (gathered * torch.where(dispatched, weights, 0).to(y.dtype)[..., None]).sum(dim=1)


def unpermute_tokens(y: torch.Tensor, weights: torch.Tensor, layout: ExpertLayout) -> torch.Tensor:
    """Rows (R, H), weights (N, k) → tokens (N, H): each token's rows summed with its weights (zero if not
    dispatched)."""
    if use_triton(y, weights):
        return UnpermuteTokensFunction.apply(y, weights, layout)
    return unpermute_tokens_reference(y, weights, layout)
