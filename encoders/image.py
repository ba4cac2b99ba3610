"""The image tower: a small Swin Transformer (timm) and its preprocessing (any image in, letterboxed)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps
from timm.models.swin_transformer import SwinTransformer
from torch import nn

from encoders.errors import TowerInputError

# The Shapes world's images are dark with saturated objects; these keep inputs near zero mean.
PIXEL_MEAN = (0.25, 0.25, 0.25)
PIXEL_STD = (0.3, 0.3, 0.3)


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


def letterbox(image: Image.Image, size: int) -> Image.Image:
    """Scales the image to fit a ``size`` square, keeping its aspect ratio, and pads with black."""
    return ImageOps.pad(image.convert("RGB"), (size, size), method=Image.Resampling.BILINEAR, color=(0, 0, 0))


def preprocess_image(image: Image.Image, size: int) -> torch.Tensor:
    """One PIL image → a normalised (3, size, size) float tensor."""
    if not isinstance(image, Image.Image):
        raise TowerInputError(f"expected a PIL image, got {type(image).__name__}")
    if image.width < 1 or image.height < 1:
        raise TowerInputError(f"image has no pixels ({image.width}×{image.height})")
    array = np.asarray(letterbox(image, size), dtype=np.float32) / 255.0  # (S, S, 3)
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    mean = torch.tensor(PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(3, 1, 1)
    return (tensor - mean) / std


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
