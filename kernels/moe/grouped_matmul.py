"""The grouped matmul: ``Y[rows of e] = X[rows of e] @ W[e]`` for W (E, K, N), each row tile against its expert's
matrix. The backward runs the same kernel against ``W[e]^T`` for dX and a grouped kernel for
``dW[e] = X_e^T @ dY_e``."""

from __future__ import annotations

import torch

from mmodal.kernels.dispatch import tl, triton, use_triton
from mmodal.kernels.launch import block_size, dot, program_block
from mmodal.kernels.moe.layout import ExpertLayout, check_float, check_on_layout_device


@triton.jit
def _grouped_matmul_kernel(
    x_ptr, stride_xm, stride_xk, w_ptr, stride_we, stride_wk, stride_wn, tile_experts_ptr,
    y_ptr, stride_ym,
    n_out, n_inner,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    tile = tl.program_id(0)
    expert = tl.load(tile_experts_ptr + tile).to(tl.int64)
    # The layout pads every expert to whole row tiles, so all BLOCK_M rows exist and share this expert.
    rows = (tile * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    outs, out_ok = program_block(1, n_out, BLOCK_N)
    w_base = w_ptr + expert * stride_we
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for start in range(0, n_inner, BLOCK_K):
        inner = start + tl.arange(0, BLOCK_K)
        inner_ok = inner < n_inner
        x = tl.load(x_ptr + rows[:, None] * stride_xm + inner[None, :] * stride_xk, mask=inner_ok[None, :], other=0.0)
        w = tl.load(
            w_base + inner[:, None] * stride_wk + outs[None, :] * stride_wn,
            mask=inner_ok[:, None] & out_ok[None, :],
            other=0.0,
        )
        acc = dot(x, w, acc)
    tl.store(y_ptr + rows[:, None] * stride_ym + outs[None, :], acc.to(y_ptr.dtype.element_ty), mask=out_ok[None, :])


@triton.jit
def _grouped_weight_grad_kernel(
    x_ptr, stride_xm, stride_xk, grad_y_ptr, stride_gm, stride_gn, expert_rows_ptr,
    grad_w_ptr, stride_we, stride_wk,
    n_inner, n_out,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    expert = tl.program_id(0)
    inner, inner_ok = program_block(1, n_inner, BLOCK_K)
    outs, out_ok = program_block(2, n_out, BLOCK_N)
    first = tl.load(expert_rows_ptr + expert)
    end = tl.load(expert_rows_ptr + expert + 1)
    acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    # An expert that got no tokens has first == end and a zero gradient.
    for start in range(first, end, BLOCK_M):
        rows = (start + tl.arange(0, BLOCK_M)).to(tl.int64)
        x_t = tl.load(
            x_ptr + rows[None, :] * stride_xm + inner[:, None] * stride_xk, mask=inner_ok[:, None], other=0.0
        )  # (BLOCK_K, BLOCK_M): this expert's inputs, transposed
        grad = tl.load(
            grad_y_ptr + rows[:, None] * stride_gm + outs[None, :] * stride_gn, mask=out_ok[None, :], other=0.0
        )
        acc = dot(x_t, grad, acc)
    tl.store(
        grad_w_ptr + expert.to(tl.int64) * stride_we + inner[:, None] * stride_wk + outs[None, :],
        acc.to(grad_w_ptr.dtype.element_ty),
        mask=inner_ok[:, None] & out_ok[None, :],
    )


def _check_grouped(x: torch.Tensor, w: torch.Tensor, layout: ExpertLayout) -> None:
    check_float("grouped matmul input", x, 2)
    check_float("expert weights", w, 3)
    check_on_layout_device(layout, x, w)
    if x.dtype != w.dtype:
        raise ValueError(f"input and expert weights must share a dtype, got {x.dtype} and {w.dtype}")
    if w.shape[0] != layout.n_experts or w.shape[1] != x.shape[1]:
        raise ValueError(
            f"expert weights must be ({layout.n_experts}, {x.shape[1]}, N) for this layout and input, "
            f"got {tuple(w.shape)}"
        )
    if x.shape[0] != layout.n_rows:
        raise ValueError(f"input has {x.shape[0]} rows, the layout {layout.n_rows}")


def _grouped_matmul_forward(x: torch.Tensor, w: torch.Tensor, layout: ExpertLayout) -> torch.Tensor:
    """``x @ w[e]`` per row tile; ``w`` may be any strided view, e.g. a transpose for the input gradient."""
    n_inner, n_out = w.shape[1], w.shape[2]
    y = torch.empty(x.shape[0], n_out, device=x.device, dtype=x.dtype)
    n_tiles = layout.tile_experts.shape[0]
    if n_tiles == 0 or n_out == 0:
        return y
    if n_inner == 0:
        return y.zero_()
    block_n = block_size(n_out, 128)
    _grouped_matmul_kernel[(n_tiles, triton.cdiv(n_out, block_n))](
        x, *x.stride(), w, *w.stride(), layout.tile_experts,
        y, y.stride(0),
        n_out, n_inner,
        BLOCK_M=layout.row_tile, BLOCK_N=block_n, BLOCK_K=block_size(n_inner, 64),
    )  # fmt: skip
    return y


def _grouped_weight_grad(x: torch.Tensor, grad_y: torch.Tensor, layout: ExpertLayout) -> torch.Tensor:
    n_inner, n_out = x.shape[1], grad_y.shape[1]
    grad_w = torch.empty(layout.n_experts, n_inner, n_out, device=x.device, dtype=x.dtype)
    if grad_w.numel() == 0:
        return grad_w
    block_k, block_n = block_size(n_inner, 64), block_size(n_out, 128)
    _grouped_weight_grad_kernel[(layout.n_experts, triton.cdiv(n_inner, block_k), triton.cdiv(n_out, block_n))](
        x, *x.stride(), grad_y, *grad_y.stride(), layout.expert_rows,
        grad_w, grad_w.stride(0), grad_w.stride(1),
        n_inner, n_out,
        BLOCK_M=layout.row_tile, BLOCK_K=block_k, BLOCK_N=block_n,
    )  # fmt: skip
    return grad_w


class GroupedMatmulFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, layout: ExpertLayout):
        _check_grouped(x, w, layout)
        ctx.layout = layout
        ctx.save_for_backward(x, w)
        return _grouped_matmul_forward(x, w, layout)

    @staticmethod
    def backward(ctx, grad_y):
        x, w = ctx.saved_tensors
        grad_x = _grouped_matmul_forward(grad_y, w.transpose(1, 2), ctx.layout) if ctx.needs_input_grad[0] else None
        grad_w = _grouped_weight_grad(x, grad_y, ctx.layout) if ctx.needs_input_grad[1] else None
        return grad_x, grad_w, None


def grouped_matmul_reference(x: torch.Tensor, w: torch.Tensor, layout: ExpertLayout) -> torch.Tensor:
    bounds = layout.expert_rows.tolist()
    return torch.cat([x[bounds[e] : bounds[e + 1]] @ w[e] for e in range(layout.n_experts)])


def grouped_matmul(x: torch.Tensor, w: torch.Tensor, layout: ExpertLayout) -> torch.Tensor:
    """Rows (R, K) grouped by expert, expert weights (E, K, N) → rows (R, N), each row times its expert's matrix."""
    if use_triton(x, w):
        return GroupedMatmulFunction.apply(x, w, layout)
    return grouped_matmul_reference(x, w, layout)
