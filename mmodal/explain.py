"""Answer maps: where an answer came from, drawn over the original image: the objects it looked at, boxed with
their weight."""

from __future__ import annotations

import io
import os

from PIL import Image, ImageDraw

from mmodal.indexes.atomic import write_bytes


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
    """Where ``answer`` (an :class:`mmodal.model.Answer`) came from, over ``image``: the objects it looked at."""
    return answer_boxes(image, answer.looked_at)


def save_answer_picture(image: Image.Image, answer, path: str | os.PathLike) -> None:
    buffer = io.BytesIO()
    answer_picture(image, answer).save(buffer, format="PNG")
    write_bytes(path, buffer.getvalue())
