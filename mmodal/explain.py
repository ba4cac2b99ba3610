"""Answer maps: where an answer came from, drawn over the original image: the objects it looked at, boxed with
their weight, or for a model that answers from patches a heat map of where the question looked."""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, ImageDraw

from encoders.pixels import letterbox_frame
from indexes.atomic import write_bytes


def answer_heatmap(image: Image.Image, attention: np.ndarray, opacity: float = 0.6) -> Image.Image:
    """Overlays a (grid, grid) attention map, which covers the letterboxed square, on the original image."""
    image = image.convert("RGB")
    width, height = image.size
    side = max(width, height)
    weights = np.asarray(attention, dtype=np.float32)
    weights = (weights - weights.min()) / max(float(weights.max() - weights.min()), 1e-8)
    square = Image.fromarray((weights * 255).astype(np.uint8)).resize((side, side), Image.Resampling.BILINEAR)
    x0, y0, _, _ = letterbox_frame(width, height)  # where letterboxing put the picture
    left, top = round(x0 * side), round(y0 * side)
    heat = np.asarray(square.crop((left, top, left + width, top + height)), dtype=np.float32)[..., None] / 255.0
    # A black-red-yellow ramp: cold areas keep the picture, hot ones turn red, then yellow.
    colour = np.concatenate([np.clip(heat * 2, 0, 1), np.clip(heat * 2 - 1, 0, 1), np.zeros_like(heat)], axis=-1)
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    alpha = opacity * heat
    blended = pixels * (1 - alpha) + colour * alpha
    return Image.fromarray((blended * 255).round().astype(np.uint8))


def answer_boxes(image: Image.Image, looked_at: list[dict], opacity: float = 0.6) -> Image.Image:
    """Boxes around the objects an answer looked at, brighter and thicker the more each counted."""
    image = image.convert("RGB")
    width, height = image.size
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    for obj in sorted(looked_at, key=lambda o: o["weight"]):  # the heaviest drawn last, on top
        weight = min(1.0, max(0.0, float(obj["weight"])))
        # Positions are fractions of the picture; the diameter is a fraction of its width.
        cx, cy, half = obj["cx"] * width, obj["cy"] * height, obj["d"] * width * 0.6
        line = max(1, round(1 + 3 * weight * max(width, height) / 256))
        colour = (255, int(64 + 191 * weight), 0, int(255 * (0.25 + 0.75 * weight) * opacity / 0.6))
        draw.rectangle((cx - half, cy - half, cx + half, cy + half), outline=colour, width=line)
        draw.text((cx - half + 2, cy - half + 1), f"{weight:.2f}", fill=colour)
    return Image.alpha_composite(image.convert("RGBA"), overlay).convert("RGB")


def answer_picture(image: Image.Image, answer) -> Image.Image:
    """Where ``answer`` (an :class:`mmodal.model.Answer`) came from, over ``image``."""
    if answer.attention is None:
        return answer_boxes(image, answer.looked_at)
    return answer_heatmap(image, answer.attention)


def save_answer_picture(image: Image.Image, answer, path: str | os.PathLike) -> None:
    buffer = io.BytesIO()
    answer_picture(image, answer).save(buffer, format="PNG")
    write_bytes(path, buffer.getvalue())
