"""Modal attention over image patches and question tokens: the answer prefix's early fusion.

Search re-ranks with the slot reasoner (``fusion.reasoner``); this patch-level fusion feeds the answer prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fusion.modal_attention import ModalAttentionLayer


@dataclass
class FusionConfig:
    """Shared-space and early-fusion sizes."""

    embed_dim: int = 128  # shared (late-fusion) embedding size
    width: int = 128  # early-fusion token width
    num_layers: int = 2  # modal attention layers
    num_heads: int = 4


class EarlyFusion(nn.Module):
    """Fuses image patch tokens with text tokens; returns fused text and image tokens."""

    def __init__(self, config: FusionConfig, image_dim: int, text_dim: int, n_image_tokens: int):
        super().__init__()
        self.image_in = nn.Linear(image_dim, config.width)
        self.text_in = nn.Linear(text_dim, config.width)
        self.image_positions = nn.Parameter(torch.zeros(1, n_image_tokens, config.width))
        nn.init.normal_(self.image_positions, std=0.02)
        self.layers = nn.ModuleList(
            ModalAttentionLayer(config.width, config.num_heads) for _ in range(config.num_layers)
        )

    def forward(
        self, image_tokens: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor, keep_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.image_in(image_tokens) + self.image_positions  # (B, N, W)
        text = self.text_in(text_tokens)  # (B, T, W)
        for layer in self.layers:
            text, image = layer(text, text_mask, image, keep_weights=keep_weights)
        return text, image

    def attention_map(self) -> torch.Tensor | None:
        """Text-to-image attention of the last layer from the last call with ``keep_weights``: (B, T, N)."""
        return self.layers[-1].text_to_image.last_weights
