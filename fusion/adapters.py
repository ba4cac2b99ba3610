"""Adapters from each tower into the shared space (late fusion): pooling, projection, normalisation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmodal.kernels.layer_norm_gelu import layer_norm_linear_gelu


class AttentionPool(nn.Module):
    """Pools a token sequence with several learned queries plus a max over tokens (masked tokens ignored).

    Mean pooling would let the background, most of an image, drown the few tokens that hold objects;
    learned queries and the max keep small objects visible in the pooled vector.
    """

    def __init__(self, dim: int, num_heads: int = 4, num_queries: int = 4):
        super().__init__()
        self.queries = nn.Parameter(torch.zeros(1, num_queries, dim))
        nn.init.normal_(self.queries, std=0.02)
        self.attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.merge = nn.Linear(num_queries * dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, T, C), mask (B, T) of real tokens → (B, C)."""
        queries = self.queries.expand(tokens.shape[0], -1, -1)
        padding = ~mask.bool() if mask is not None else None
        pooled, _ = self.attention(queries, tokens, tokens, key_padding_mask=padding, need_weights=False)  # (B, Q, C)
        maxed = tokens if mask is None else tokens.masked_fill(~mask.bool().unsqueeze(-1), float("-inf"))
        return self.norm(self.merge(pooled.flatten(1)) + maxed.amax(dim=1))


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over real tokens: (B, T, C), (B, T) → (B, C)."""
    if mask is None:
        return tokens.mean(dim=1)
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


class Adapter(nn.Module):
    """Pooled tower features → the shared embedding space, through a residual MLP adapter."""

    def __init__(self, in_dim: int, embed_dim: int, num_heads: int = 4):
        super().__init__()
        self.pool = AttentionPool(in_dim, num_heads)
        self.mlp = nn.Sequential(nn.Linear(in_dim, 2 * in_dim), nn.GELU(), nn.Linear(2 * in_dim, in_dim))
        self.project = nn.Linear(in_dim, embed_dim, bias=False)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None, normalize: bool = True) -> torch.Tensor:
        pooled = self.pool(tokens, mask)  # (B, C)
        embedding = self.project(pooled + self.mlp(pooled))  # (B, D)
        return F.normalize(embedding, dim=-1) if normalize else embedding


class SlotPooler(nn.Module):
    """An image's object slots → its late-fusion embedding: each slot embedded alone, then summed by presence.

    A sum over slots keeps one term per object, so the pooled vector says which colour sits with which shape;
    the slots' own attribute probabilities carry the binding that a pooled patch grid blurs.
    """

    def __init__(self, slot_dim: int, embed_dim: int, width: int = 256):
        super().__init__()
        self.slot_mlp = nn.Sequential(nn.Linear(slot_dim, width), nn.GELU(), nn.Linear(width, width), nn.GELU())
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU())
        self.project = nn.Linear(width, embed_dim, bias=False)

    def forward(self, slots: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """slots (B, N, F), presence in column 0 → (B, D)."""
        presence = slots[..., :1]  # (B, N, 1)
        pooled = (self.slot_mlp(slots) * presence).sum(dim=1)  # (B, W)
        embedding = self.project(layer_norm_linear_gelu(pooled, self.head[0], self.head[1]))
        return F.normalize(embedding, dim=-1) if normalize else embedding
