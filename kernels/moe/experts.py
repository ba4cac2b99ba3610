"""The routed experts: the pieces run in order on the Triton path, and the plain-torch reference beside them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmodal.kernels.dispatch import use_triton
from mmodal.kernels.moe.gating import topk_gating, topk_gating_reference
from mmodal.kernels.moe.grouped_matmul import grouped_matmul
from mmodal.kernels.moe.layout import expert_layout
from mmodal.kernels.moe.permute import permute_tokens, unpermute_tokens


def moe_experts_reference(
    tokens, router_logits, w_gate_up, w_down, top_k: int, keep=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The plain-torch routed experts (as :func:`moe_experts`): one masked gather, two products and an
    index_add per expert."""
    if keep is None:
        keep = torch.ones_like(tokens[:, 0], dtype=torch.bool)
    weights, experts = topk_gating_reference(router_logits, top_k)
    weights = weights.to(tokens.dtype)
    routed = torch.zeros_like(tokens)
    for e in range(w_gate_up.shape[0]):
        rows, slot = torch.where((experts == e) & keep[:, None])
        if rows.numel() == 0:
            continue
        gate, up = (tokens[rows] @ w_gate_up[e]).chunk(2, dim=-1)
        out = (F.silu(gate) * up) @ w_down[e]  # (n_e, H)
        routed.index_add_(0, rows, out * weights[rows, slot, None])
    return routed, weights, experts


def moe_experts(
    tokens: torch.Tensor,
    router_logits: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    top_k: int,
    keep: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The routed experts' output for each token.

    Args:
        tokens: (N, H) inputs.
        router_logits: (N, E) router scores.
        w_gate_up: (E, H, 2F) each expert's gate and up projections side by side.
        w_down: (E, F, H) each expert's down projection.
        top_k: experts per token.
        keep: (N,) bool; tokens with False (padding) are not dispatched and get zeros. None keeps all.

    Returns:
        ``(routed (N, H), weights (N, k) in the tokens' dtype, experts (N, k) int64)``.
    """
    if tokens.dim() != 2 or router_logits.shape != (tokens.shape[0], w_gate_up.shape[0]):
        raise ValueError(
            f"tokens must be (N, H) and router logits (N, E={w_gate_up.shape[0]}), "
            f"got {tuple(tokens.shape)} and {tuple(router_logits.shape)}"
        )
    if not use_triton(tokens, router_logits, w_gate_up, w_down):
        return moe_experts_reference(tokens, router_logits, w_gate_up, w_down, top_k, keep)
    weights, experts = topk_gating(router_logits, top_k)
    weights = weights.to(tokens.dtype)
    layout = expert_layout(experts, keep, w_gate_up.shape[0])
    rows = permute_tokens(tokens, layout)
    gate, up = grouped_matmul(rows, w_gate_up, layout).chunk(2, dim=-1)
    hidden = grouped_matmul(F.silu(gate) * up, w_down, layout)
    return unpermute_tokens(hidden, weights, layout), weights, experts
