"""Top-k gating: router logits (N, E) → each token's k experts and their weights, the softmax over E cut to the
top k and renormalised; the backward gives d logits."""

from __future__ import annotations

import torch

from mmodal.kernels.dispatch import tl, triton, use_triton
from mmodal.kernels.launch import program_block
from mmodal.kernels.moe.layout import TOKEN_BLOCK, check_float

MAX_EXPERTS = 64  # the gating kernel holds a token's logits for all experts in one block


@triton.jit
def _token_slots(n_tokens, TOP_K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr):
    """This program's tokens, and which (token, slot) pairs of its (BLOCK_T, BLOCK_K) tile exist."""
    tokens, token_ok = program_block(0, n_tokens, BLOCK_T)
    slots = tl.arange(0, BLOCK_K)
    return tokens, slots, token_ok, token_ok[:, None] & (slots < TOP_K)[None, :]


@triton.jit
def _topk_gating_forward_kernel(
    logits_ptr, stride_lt, stride_le,
    weights_ptr, stride_wt, experts_ptr, stride_et,
    n_tokens, n_experts,
    TOP_K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    tokens, slots, token_ok, ok = _token_slots(n_tokens, TOP_K, BLOCK_T, BLOCK_K)
    cols = tl.arange(0, BLOCK_E)
    expert_ok = cols < n_experts
    logits = tl.load(
        logits_ptr + tokens[:, None] * stride_lt + cols[None, :] * stride_le,
        mask=token_ok[:, None] & expert_ok[None, :],
        other=0.0,
    ).to(tl.float32)
    # Missing experts never win; rows past the last token stay finite so that their (unstored) weights are too.
    logits = tl.where(expert_ok[None, :], logits, float("-inf"))
    chosen = tl.full((BLOCK_T, BLOCK_K), float("-inf"), dtype=tl.float32)
    chosen_ids = tl.zeros((BLOCK_T, BLOCK_K), dtype=tl.int32)
    # Softmax is monotonic, so the top k of the logits are the top k of the probabilities, and the k
    # renormalised probabilities are the softmax over the k chosen logits.
    for j in tl.static_range(TOP_K):
        best = tl.argmax(logits, axis=1)
        best_logit = tl.max(logits, axis=1)
        chosen = tl.where(slots[None, :] == j, best_logit[:, None], chosen)
        chosen_ids = tl.where(slots[None, :] == j, best[:, None], chosen_ids)
        logits = tl.where(cols[None, :] == best[:, None], float("-inf"), logits)
    # Slot 0 holds the largest logit, so no exponent is positive.
    top = tl.max(chosen, axis=1)
    scores = tl.exp(chosen - top[:, None])
    weights = scores / tl.sum(scores, axis=1)[:, None]
    tl.store(weights_ptr + tokens[:, None] * stride_wt + slots[None, :], weights, mask=ok)
    tl.store(experts_ptr + tokens[:, None] * stride_et + slots[None, :], chosen_ids.to(tl.int64), mask=ok)


@triton.jit
def _topk_gating_backward_kernel(
    weights_ptr, stride_wt, grad_weights_ptr, stride_gt, stride_gk, experts_ptr, stride_et,
    grad_logits_ptr, stride_dt,
    n_tokens, n_experts,
    TOP_K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    tokens, slots, token_ok, ok = _token_slots(n_tokens, TOP_K, BLOCK_T, BLOCK_K)
    cols = tl.arange(0, BLOCK_E)
    weights = tl.load(weights_ptr + tokens[:, None] * stride_wt + slots[None, :], mask=ok, other=0.0)
    grad = tl.load(grad_weights_ptr + tokens[:, None] * stride_gt + slots[None, :] * stride_gk, mask=ok, other=0.0).to(
        tl.float32
    )
    ids = tl.load(experts_ptr + tokens[:, None] * stride_et + slots[None, :], mask=ok, other=-1).to(tl.int32)
    # Softmax over the chosen logits: d z_j = w_j * (g_j - sum_i w_i g_i); unchosen logits get nothing.
    grad_chosen = weights * (grad - tl.sum(weights * grad, axis=1)[:, None])
    hits = ids[:, :, None] == cols[None, None, :]
    grad_logits = tl.sum(tl.where(hits, grad_chosen[:, :, None], 0.0), axis=1)
    tl.store(
        grad_logits_ptr + tokens[:, None] * stride_dt + cols[None, :],
        grad_logits.to(grad_logits_ptr.dtype.element_ty),
        mask=token_ok[:, None] & (cols < n_experts)[None, :],
    )


def _launch_options(n_experts: int, top_k: int) -> dict:
    """Both kernels' tile: TOKEN_BLOCK tokens by every expert by every one of the k slots."""
    return dict(
        TOP_K=top_k,
        BLOCK_T=TOKEN_BLOCK,
        BLOCK_E=triton.next_power_of_2(n_experts),
        BLOCK_K=triton.next_power_of_2(top_k),
    )


def _topk_gating_forward(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    check_float("router logits", logits, 2)
    n_tokens, n_experts = logits.shape
    if n_experts > MAX_EXPERTS:
        raise ValueError(
            f"{n_experts} experts is more than the gating kernel's {MAX_EXPERTS}; use MMODAL_KERNELS=torch"
        )
    if not 1 <= top_k <= n_experts:
        raise ValueError(f"top_k must be in 1..{n_experts}, got {top_k}")
    weights = torch.empty(n_tokens, top_k, device=logits.device, dtype=torch.float32)
    experts = torch.empty(n_tokens, top_k, device=logits.device, dtype=torch.int64)
    if n_tokens == 0:
        return weights, experts
    _topk_gating_forward_kernel[(triton.cdiv(n_tokens, TOKEN_BLOCK),)](
        logits, *logits.stride(),
        weights, weights.stride(0), experts, experts.stride(0),
        n_tokens, n_experts,
        **_launch_options(n_experts, top_k),
    )  # fmt: skip
    return weights, experts


def _topk_gating_backward(
    weights: torch.Tensor, grad_weights: torch.Tensor, experts: torch.Tensor, n_experts: int, dtype: torch.dtype
) -> torch.Tensor:
    n_tokens, top_k = weights.shape
    grad_logits = torch.empty(n_tokens, n_experts, device=weights.device, dtype=dtype)
    if n_tokens == 0:
        return grad_logits
    _topk_gating_backward_kernel[(triton.cdiv(n_tokens, TOKEN_BLOCK),)](
        weights, weights.stride(0), grad_weights, *grad_weights.stride(), experts, experts.stride(0),
        grad_logits, grad_logits.stride(0),
        n_tokens, n_experts,
        **_launch_options(n_experts, top_k),
    )  # fmt: skip
    return grad_logits


class TopKGatingFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, top_k: int):
        weights, experts = _topk_gating_forward(logits, top_k)
        ctx.save_for_backward(weights, experts)
        ctx.n_experts, ctx.logits_dtype = logits.shape[1], logits.dtype
        ctx.mark_non_differentiable(experts)
        return weights, experts

    @staticmethod
    def backward(ctx, grad_weights, _grad_experts):
        weights, experts = ctx.saved_tensors
        return _topk_gating_backward(weights, grad_weights, experts, ctx.n_experts, ctx.logits_dtype), None


def topk_gating_reference(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain-torch gating: fp32 softmax over the experts, top k, renormalised; (fp32 weights, int64 ids)."""
    weights, experts = logits.float().softmax(dim=-1).topk(top_k, dim=-1)
    return weights / weights.sum(dim=-1, keepdim=True), experts


def topk_gating(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Router logits (N, E) → fp32 weights (N, k) (softmax, top k, renormalised) and int64 expert ids (N, k),
    highest weight first."""
    if use_triton(logits):
        return TopKGatingFunction.apply(logits, top_k)
    return topk_gating_reference(logits, top_k)
