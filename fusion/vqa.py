"""The VQA head: fused image and question tokens become the prefix the language core answers after."""

from __future__ import annotations

import torch
from torch import nn


class AnswerPrefix(nn.Module):
    """Projects early-fusion tokens into the language core's width, marking which side each came from."""

    def __init__(self, fusion_width: int, hidden_size: int):
        super().__init__()
        self.image_proj = nn.Linear(fusion_width, hidden_size)
        self.text_proj = nn.Linear(fusion_width, hidden_size)
        self.side = nn.Parameter(torch.zeros(2, hidden_size))  # image / question type embeddings
        nn.init.normal_(self.side, std=0.02)
        self.norm = nn.LayerNorm(hidden_size)

    def forward(
        self, fused_image: torch.Tensor, fused_text: torch.Tensor, text_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, W) image and (B, T, W) question tokens → prefix (B, N+T, H) and its mask (B, N+T)."""
        image = self.image_proj(fused_image) + self.side[0]
        text = self.text_proj(fused_text) + self.side[1]
        prefix = self.norm(torch.cat([image, text], dim=1))
        image_mask = torch.ones(image.shape[:2], dtype=text_mask.dtype, device=text_mask.device)
        return prefix, torch.cat([image_mask, text_mask], dim=1)
