"""The image tower: a small Swin Transformer (timm) and its preprocessing (any image in, letterboxed)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from timm.models.swin_transformer import SwinTransformer
from torch import nn

from encoders.errors import TowerInputError
from encoders.pixels import PIXEL_MEAN, PIXEL_STD, letterboxed_array


@dataclass
class ImageEncoderConfig:
    """A Swin Transformer sized for 64–256 px input."""

    image_size: int = 64  # every image is letterboxed to this square size
    patch_size: int = 4  # pixels per side of one input patch
    embed_dim: int = 64  # width of the first stage (doubles every stage)
    depths: tuple[int, ...] = (2, 2, 2)  # blocks per stage
    num_heads: tuple[int, ...] = (2, 4, 8)  # attention heads per stage
    window_size: int = 4  # attention window, in patches
    drop_path_rate: float = 0.0

    @property
    def out_dim(self) -> int:
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    @property
    def grid(self) -> int:
        """Side of the last stage's token grid."""
        return self.image_size // self.patch_size // 2 ** (len(self.depths) - 1)


def normalize_pixels(pixels: torch.Tensor, mean=PIXEL_MEAN, std=PIXEL_STD) -> torch.Tensor:
    """uint8 pixels (B, 3, S, S) → a tower's normalised float input (the Shapes towers' statistics by default)."""
    mean = torch.tensor(mean, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=pixels.device).view(1, 3, 1, 1)
    return (pixels.float() / 255.0 - mean) / std


def preprocess_image(image: Image.Image, size: int) -> torch.Tensor:
    """One PIL image → a normalised (3, size, size) float tensor."""
    if not isinstance(image, Image.Image):
        raise TowerInputError(f"expected a PIL image, got {type(image).__name__}")
    if image.width < 1 or image.height < 1:
        raise TowerInputError(f"image has no pixels ({image.width}×{image.height})")
    return normalize_pixels(torch.from_numpy(letterboxed_array(image, size))[None])[0]


class SwinImageEncoder(nn.Module):
    """Swin backbone returning the last stage's patch tokens (B, grid², C)."""

    def __init__(self, config: ImageEncoderConfig):
        super().__init__()
        self.config = config
        self.backbone = SwinTransformer(
            img_size=config.image_size,
            patch_size=config.patch_size,
            in_chans=3,
            num_classes=0,
            global_pool="",
            embed_dim=config.embed_dim,
            depths=tuple(config.depths),
            num_heads=tuple(config.num_heads),
            window_size=config.window_size,
            drop_path_rate=config.drop_path_rate,
        )

    def check_pixels(self, pixels: torch.Tensor) -> None:
        size = self.config.image_size
        if pixels.ndim != 4 or pixels.shape[1:] != (3, size, size):
            raise TowerInputError(
                f"image tower expects pixels of shape (B, 3, {size}, {size}), got {tuple(pixels.shape)}; "
                "use preprocess_image() on PIL images"
            )
        if pixels.shape[0] == 0:
            raise TowerInputError("empty batch of images")

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        self.check_pixels(pixels)
        features = self.backbone.forward_features(pixels)  # (B, g, g, C)
        return features.flatten(1, 2)  # (B, g*g, C)
