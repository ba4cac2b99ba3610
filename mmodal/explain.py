"""Answer maps: where the question looked, drawn as a heat map over the original image."""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from mmodal.fileio import write_bytes


def answer_heatmap(image: Image.Image, attention: np.ndarray, opacity: float = 0.6) -> Image.Image:
    """Overlays a (grid, grid) attention map, which covers the letterboxed square, on the original image."""
    image = image.convert("RGB")
    width, height = image.size
    side = max(width, height)
    weights = np.asarray(attention, dtype=np.float32)
    weights = (weights - weights.min()) / max(float(weights.max() - weights.min()), 1e-8)
    square = Image.fromarray((weights * 255).astype(np.uint8)).resize((side, side), Image.Resampling.BILINEAR)
    left, top = (side - width) // 2, (side - height) // 2  # where letterboxing put the picture
    heat = np.asarray(square.crop((left, top, left + width, top + height)), dtype=np.float32)[..., None] / 255.0
    # A black-red-yellow ramp: cold areas keep the picture, hot ones turn red, then yellow.
    colour = np.concatenate([np.clip(heat * 2, 0, 1), np.clip(heat * 2 - 1, 0, 1), np.zeros_like(heat)], axis=-1)
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    alpha = opacity * heat
    blended = pixels * (1 - alpha) + colour * alpha
    return Image.fromarray((blended * 255).round().astype(np.uint8))


def save_heatmap(image: Image.Image, attention: np.ndarray, path: str | os.PathLike) -> None:
    buffer = io.BytesIO()
    answer_heatmap(image, attention).save(buffer, format="PNG")
    write_bytes(path, buffer.getvalue())
