"""Image preprocessing that needs no torch: letterboxing to the tower's square input, as uint8 pixels.

Decoding workers import only this, so they start fast and stay small.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# The Shapes world's images are dark with saturated objects; these keep inputs near zero mean.
PIXEL_MEAN = (0.25, 0.25, 0.25)
PIXEL_STD = (0.3, 0.3, 0.3)


def letterbox(image: Image.Image, size: int) -> Image.Image:
    """Scales the image to fit a ``size`` square, keeping its aspect ratio, and pads with black (centred).

    Pixel for pixel what ``ImageOps.pad`` makes, except that a very thin picture (a 4000×30 panorama) keeps a
    line at least one pixel thick, where ``pad`` would ask for a zero-pixel side and fail.
    """
    image = image.convert("RGB")
    if image.width < 1 or image.height < 1:
        raise ValueError(f"an image of {image.width}×{image.height} pixels has nothing to letterbox")
    long_side = max(image.width, image.height)
    width = max(1, round(image.width / long_side * size))
    height = max(1, round(image.height / long_side * size))
    resized = image.resize((width, height), Image.Resampling.BILINEAR)
    if (width, height) == (size, size):
        return resized
    square = Image.new("RGB", (size, size), (0, 0, 0))
    square.paste(resized, (round((size - width) / 2), round((size - height) / 2)))
    return square


def letterboxed_array(image: Image.Image, size: int) -> np.ndarray:
    """One PIL image → letterboxed uint8 pixels, channels first: (3, size, size)."""
    return np.ascontiguousarray(np.asarray(letterbox(image, size), dtype=np.uint8).transpose(2, 0, 1))


def letterbox_frame(width: int, height: int) -> tuple[float, float, float, float]:
    """Where a ``width`` × ``height`` picture lands inside its letterboxed square: (x0, y0, w, h) as fractions
    of the square's side. Positions in the square map back to the picture as ``((x - x0) / w, (y - y0) / h)``."""
    if width < 1 or height < 1:
        raise ValueError(f"an image of {width}×{height} pixels has no frame")
    side = max(width, height)
    w, h = width / side, height / side
    return (1 - w) / 2, (1 - h) / 2, w, h


def letterboxed_batch(images, size: int) -> tuple[np.ndarray, np.ndarray]:
    """PIL images → letterboxed uint8 pixels (B, 3, size, size) and each picture's frame in its square (B, 4)."""
    if len(images) == 0:
        raise ValueError("no images to encode")
    for image in images:
        if not isinstance(image, Image.Image):
            raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    pixels = np.stack([letterboxed_array(image, size) for image in images])
    frames = np.array([letterbox_frame(image.width, image.height) for image in images], dtype=np.float32)
    return pixels, frames
