"""uint8 pixels to a tower's float input: the one torch step after letterboxing (``mmodal.encoders.pixels``)."""

from __future__ import annotations

import torch

from mmodal.encoders.pixels import PIXEL_MEAN, PIXEL_STD


def normalize_pixels(pixels: torch.Tensor, mean=PIXEL_MEAN, std=PIXEL_STD) -> torch.Tensor:
    """uint8 pixels (B, 3, S, S) → a tower's normalised float input (the Shapes towers' statistics by default)."""
    mean = torch.tensor(mean, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=pixels.device).view(1, 3, 1, 1)
    return (pixels.float() / 255.0 - mean) / std
