"""LayerNorm → Linear → GELU in one pass: ``gelu(layer_norm(x) @ weight.T + bias)``, the first half of the towers'
pre-norm MLP blocks.

The forward kernel normalises each tile of ``x`` as it is loaded for the matrix product, so the normalised
activations never reach memory, and applies the bias and the exact (erf) GELU in the product's epilogue. The
backward pass runs GELU's derivative and LayerNorm's input gradient as Triton kernels and leaves the two
weight-sized products to cuBLAS.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmodal.kernels.dispatch import tl, triton, use_triton
from mmodal.kernels.launch import block_size, check_kernel_dtype, check_one_device, dot, program_block

MAX_FEATURES = 8192  # the backward kernel holds a whole row in one block
ROW_BLOCK = 16  # rows per program of the row statistics and the LayerNorm backward


def _check(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
    k = x.shape[-1]
    if weight.dim() != 2 or weight.shape[1] != k:
        raise ValueError(f"weight must be (out_features, {k}) for inputs of {k} features, got {tuple(weight.shape)}")
    if gamma.shape != (k,) or beta.shape != (k,):
        raise ValueError(f"the norm's weight and bias must be ({k},), got {tuple(gamma.shape)} and {tuple(beta.shape)}")
    if bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must be ({weight.shape[0]},), got {tuple(bias.shape)}")
    if k > MAX_FEATURES:
        raise ValueError(f"{k} input features is more than the kernel's {MAX_FEATURES}; use MMODAL_KERNELS=torch")
    check_kernel_dtype("inputs and parameters", x, gamma, beta, weight, bias)
    check_one_device("inputs and parameters", x, gamma, beta, weight, bias)


# ----------------------------------------------------------------------------------------------- row statistics


@triton.jit
def _row_chunk(x_ptr, rows, row_ok, start, K, stride_xm, BLOCK_K: tl.constexpr):
    """Columns start..start + BLOCK_K of these rows in fp32 (0 past the row), and where they exist."""
    cols = start + tl.arange(0, BLOCK_K)
    ok = row_ok[:, None] & (cols < K)[None, :]
    return tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=ok, other=0.0).to(tl.float32), ok


@triton.jit
def _row_stats_kernel(x_ptr, mean_ptr, rstd_ptr, M, K, stride_xm, eps, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    rows, row_ok = program_block(0, M, BLOCK_M)
    total = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for start in range(0, K, BLOCK_K):
        x, _ = _row_chunk(x_ptr, rows, row_ok, start, K, stride_xm, BLOCK_K)
        total += tl.sum(x, axis=1)
    mean = total / K
    # A second pass over the row: the variance about the mean, which stays accurate for large activations.
    spread = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for start in range(0, K, BLOCK_K):
        x, ok = _row_chunk(x_ptr, rows, row_ok, start, K, stride_xm, BLOCK_K)
        centred = tl.where(ok, x - mean[:, None], 0.0)
        spread += tl.sum(centred * centred, axis=1)
    tl.store(mean_ptr + rows, mean, mask=row_ok)
    tl.store(rstd_ptr + rows, 1.0 / tl.sqrt(spread / K + eps), mask=row_ok)


def _row_stats(x2d: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    m, k = x2d.shape
    mean = torch.empty(m, device=x2d.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    _row_stats_kernel[(triton.cdiv(m, ROW_BLOCK),)](
        x2d, mean, rstd, m, k, x2d.stride(0), eps, BLOCK_M=ROW_BLOCK, BLOCK_K=block_size(k, 128, least=1)
    )
    return mean, rstd


# ----------------------------------------------------------------------------------------------- forward


@triton.jit
def _forward_kernel(
    x_ptr,
    mean_ptr,
    rstd_ptr,
    gamma_ptr,
    beta_ptr,
    w_ptr,
    b_ptr,
    pre_ptr,
    out_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_wn,
    stride_om,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """GELU of the normalised rows times the weight plus the bias; the pre-activation too unless ``pre_ptr`` is
    None."""
    rows, row_ok = program_block(0, M, BLOCK_M)
    outs, out_ok = program_block(1, N, BLOCK_N)
    mean = tl.load(mean_ptr + rows, mask=row_ok, other=0.0)
    rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for start in range(0, K, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        col_ok = cols < K
        x = tl.load(
            x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0
        ).to(tl.float32)
        gamma = tl.load(gamma_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        beta = tl.load(beta_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        # Columns past K have gamma = beta = 0, so they add nothing to the product.
        normed = (x - mean[:, None]) * rstd[:, None] * gamma[None, :] + beta[None, :]
        w = tl.load(
            w_ptr + outs[None, :] * stride_wn + cols[:, None], mask=col_ok[:, None] & out_ok[None, :], other=0.0
        )  # (BLOCK_K, BLOCK_N): the weight's transpose
        acc += dot(normed.to(w.dtype), w)
    pre = acc + tl.load(b_ptr + outs, mask=out_ok, other=0.0).to(tl.float32)[None, :]
    out = 0.5 * pre * (1.0 + tl.math.erf(pre * 0.7071067811865476))
    offsets = rows[:, None] * stride_om + outs[None, :]
    ok = row_ok[:, None] & out_ok[None, :]
    tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=ok)
    if pre_ptr is not None:
        tl.store(pre_ptr + offsets, pre.to(pre_ptr.dtype.element_ty), mask=ok)


def _forward(x2d, gamma, beta, weight, bias, eps: float, keep_pre: bool):
    """(out, pre-activation or None, row means, row reciprocal standard deviations)."""
    m, k = x2d.shape
    n = weight.shape[0]
    mean, rstd = _row_stats(x2d, eps)
    out = torch.empty(m, n, device=x2d.device, dtype=x2d.dtype)
    pre = torch.empty_like(out) if keep_pre else None
    block_m, block_n, block_k = 32, 64, 32
    _forward_kernel[(triton.cdiv(m, block_m), triton.cdiv(n, block_n))](
        x2d,
        mean,
        rstd,
        gamma,
        beta,
        weight,
        bias,
        pre,
        out,
        m,
        n,
        k,
        x2d.stride(0),
        weight.stride(0),
        out.stride(0),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
    )
    return out, pre, mean, rstd


# ----------------------------------------------------------------------------------------------- backward


@triton.jit
def _gelu_backward_kernel(grad_ptr, pre_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offsets, ok = program_block(0, n, BLOCK)
    grad = tl.load(grad_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
    pre = tl.load(pre_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
    cdf = 0.5 * (1.0 + tl.math.erf(pre * 0.7071067811865476))
    pdf = tl.exp(-0.5 * pre * pre) * 0.3989422804014327
    tl.store(out_ptr + offsets, (grad * (cdf + pre * pdf)).to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _layer_norm_backward_kernel(
    grad_ptr,
    x_ptr,
    mean_ptr,
    rstd_ptr,
    gamma_ptr,
    dx_ptr,
    dgamma_ptr,
    dbeta_ptr,
    M,
    K,
    stride_m,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    block = tl.program_id(0)
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_K)
    row_ok, col_ok = rows < M, cols < K
    ok = row_ok[:, None] & col_ok[None, :]
    offsets = rows[:, None] * stride_m + cols[None, :]
    grad = tl.load(grad_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
    mean = tl.load(mean_ptr + rows, mask=row_ok, other=0.0)
    rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
    gamma = tl.load(gamma_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    x_hat = tl.where(ok, (x - mean[:, None]) * rstd[:, None], 0.0)
    scaled = grad * gamma[None, :]
    mean_scaled = tl.sum(scaled, axis=1) / K
    mean_projection = tl.sum(scaled * x_hat, axis=1) / K
    dx = rstd[:, None] * (scaled - mean_scaled[:, None] - x_hat * mean_projection[:, None])
    tl.store(dx_ptr + offsets, dx.to(dx_ptr.dtype.element_ty), mask=ok)
    # Each program writes its rows' share of the parameter gradients; the host sums the shares.
    tl.store(dgamma_ptr + block * K + cols, tl.sum(grad * x_hat, axis=0), mask=col_ok)
    tl.store(dbeta_ptr + block * K + cols, tl.sum(grad, axis=0), mask=col_ok)


def _backward(grad_out, x2d, gamma, beta, weight, pre, mean, rstd):
    """Gradients of (x2d, gamma, beta, weight, bias)."""
    m, k = x2d.shape
    grad_out = grad_out.reshape(m, -1).contiguous()
    grad_pre = torch.empty_like(pre)
    block = 1024
    _gelu_backward_kernel[(triton.cdiv(pre.numel(), block),)](grad_out, pre, grad_pre, pre.numel(), BLOCK=block)
    x_hat = (x2d.float() - mean[:, None]) * rstd[:, None]
    normed = (x_hat * gamma.float() + beta.float()).to(x2d.dtype)
    grad_weight = grad_pre.t() @ normed
    grad_bias = grad_pre.float().sum(0).to(weight.dtype)
    grad_normed = (grad_pre @ weight).contiguous()
    blocks = triton.cdiv(m, ROW_BLOCK)
    grad_x = torch.empty_like(x2d)
    grad_gamma = torch.empty(blocks, k, device=x2d.device, dtype=torch.float32)
    grad_beta = torch.empty_like(grad_gamma)
    _layer_norm_backward_kernel[(blocks,)](
        grad_normed,
        x2d,
        mean,
        rstd,
        gamma,
        grad_x,
        grad_gamma,
        grad_beta,
        m,
        k,
        x2d.stride(0),
        BLOCK_M=ROW_BLOCK,
        BLOCK_K=triton.next_power_of_2(k),
    )
    return grad_x, grad_gamma.sum(0).to(gamma.dtype), grad_beta.sum(0).to(beta.dtype), grad_weight, grad_bias


# ----------------------------------------------------------------------------------------------- the op


class LayerNormLinearGELUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gamma, beta, weight, bias, eps: float):
        _check(x, gamma, beta, weight, bias)
        shape = x.shape
        x2d = x.reshape(-1, shape[-1]).contiguous()
        weight = weight.contiguous()
        out, pre, mean, rstd = _forward(x2d, gamma.contiguous(), beta.contiguous(), weight, bias, eps, True)
        ctx.save_for_backward(x2d, gamma, beta, weight, pre, mean, rstd)
        ctx.input_shape = shape
        return out.reshape(*shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out):
        grad_x, *grad_parameters = _backward(grad_out, *ctx.saved_tensors)
        return grad_x.view(ctx.input_shape), *grad_parameters, None


def layer_norm_linear_gelu_reference(x, gamma, beta, weight, bias, eps: float = 1e-5) -> torch.Tensor:
    """The plain-torch path and the kernel's oracle."""
    return F.gelu(F.linear(F.layer_norm(x, (x.shape[-1],), gamma, beta, eps), weight, bias))


def layer_norm_linear_gelu(x: torch.Tensor, norm: nn.LayerNorm, linear: nn.Linear) -> torch.Tensor:
    """``GELU(linear(norm(x)))`` for a LayerNorm and a Linear layer (both with weights and biases)."""
    if norm.weight is None or norm.bias is None or linear.bias is None:
        raise ValueError("the fused op needs an affine LayerNorm and a Linear layer with a bias")
    args = (x, norm.weight, norm.bias, linear.weight, linear.bias)
    if use_triton(*args):
        return LayerNormLinearGELUFunction.apply(*args, norm.eps)
    return layer_norm_linear_gelu_reference(*args, norm.eps)
