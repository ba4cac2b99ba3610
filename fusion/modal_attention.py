"""Modal attention: tokens of one modality attending to another's, with learned tanh gates."""

from __future__ import annotations

import torch
from torch import nn

from kernels.attention import multihead_attention
from kernels.layer_norm_gelu import layer_norm_linear_gelu


class GatedCrossAttention(nn.Module):
    """``x + tanh(g) * CrossAttn(x, context)``, then a gated MLP; gates start at zero (Flamingo)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.norm_x = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.attention_gate = nn.Parameter(torch.zeros(1))
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.mlp_gate = nn.Parameter(torch.zeros(1))
        self.last_weights: torch.Tensor | None = None

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor | None = None,
        keep_weights: bool = False,
    ) -> torch.Tensor:
        """x (B, T, C) attends to context (B, S, C); context_mask (B, S) marks real context tokens."""
        key_mask = context_mask.bool() if context_mask is not None else None
        attended, weights = multihead_attention(
            self.attention, self.norm_x(x), self.norm_context(context), key_mask, need_weights=keep_weights
        )
        self.last_weights = weights  # (B, T, S) when kept: where each token looked
        x = x + torch.tanh(self.attention_gate) * attended
        return x + torch.tanh(self.mlp_gate) * self.mlp[2](layer_norm_linear_gelu(x, self.norm_mlp, self.mlp[0]))


class SelfAttention(nn.Module):
    """Pre-norm self-attention and MLP block over one modality's tokens."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm(x)
        x = x + multihead_attention(self.attention, h, h, mask.bool() if mask is not None else None)[0]
        return x + self.mlp[2](layer_norm_linear_gelu(x, self.norm_mlp, self.mlp[0]))


class ModalAttentionLayer(nn.Module):
    """One early-fusion layer: text attends to image patches, image patches attend to text, each then self-attends."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.text_to_image = GatedCrossAttention(dim, num_heads)
        self.image_to_text = GatedCrossAttention(dim, num_heads)
        self.text_self = SelfAttention(dim, num_heads)
        self.image_self = SelfAttention(dim, num_heads)

    def forward(
        self, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor, keep_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        new_text = self.text_to_image(text, image, keep_weights=keep_weights)
        new_image = self.image_to_text(image, text, context_mask=text_mask)
        return self.text_self(new_text, text_mask), self.image_self(new_image)
