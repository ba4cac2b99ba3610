"""Draws Shapes scene graphs as images, across the spec's whole range of visual variation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from mmodal.shapes.scene import COLOR_JITTER, COLORS, Scene, SceneObject

SUPERSAMPLE = 4
STAR_INNER_RATIO = 0.45
OUTLINE_SHADE = 0.55


@dataclass(frozen=True)
class RenderStyle:
    """How one image is drawn, beyond its scene graph (kept with each record for reproducibility)."""

    background: str = "black"  # black | gray | noise
    background_value: int = 0  # gray level for "gray", mean level for "noise"
    antialias: bool = True
    outline: bool = False
    # Per-object (r, g, b) fill actually drawn: the canonical colour with up to ±24 jitter per channel.
    fills: tuple[tuple[int, int, int], ...] = field(default_factory=tuple)
    noise_seed: int = 0

    def to_dict(self) -> dict:
        return {
            "background": self.background,
            "background_value": self.background_value,
            "antialias": self.antialias,
            "outline": self.outline,
            "fills": [list(f) for f in self.fills],
            "noise_seed": self.noise_seed,
        }


def sample_style(scene: Scene, rng: np.random.Generator) -> RenderStyle:
    """Draws a random style covering the spec's background, edge, outline and colour-jitter range."""
    background = str(rng.choice(["black", "gray", "noise"]))
    value = {"black": 0, "gray": int(rng.integers(30, 81)), "noise": int(rng.integers(15, 75))}[background]
    fills = tuple(
        tuple(int(np.clip(c + rng.integers(-COLOR_JITTER, COLOR_JITTER + 1), 0, 255)) for c in COLORS[o.color])
        for o in scene.objects
    )
    return RenderStyle(
        background=background,
        background_value=value,
        antialias=bool(rng.random() < 0.6),
        outline=bool(rng.random() < 0.3),
        fills=fills,
        noise_seed=int(rng.integers(0, 2**31 - 1)),
    )


def _background(style: RenderStyle, width: int, height: int) -> Image.Image:
    if style.background != "noise":
        return Image.new("RGB", (width, height), (style.background_value,) * 3)
    rng = np.random.default_rng(style.noise_seed)
    cells = int(rng.integers(3, 9))
    coarse = rng.random((cells, cells)).astype(np.float32)
    smooth = np.asarray(
        Image.fromarray((coarse * 255).astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC),
        dtype=np.float32,
    )
    grain = rng.normal(0.0, 8.0, (height, width)).astype(np.float32)
    # Value noise around the chosen mean, kept dark so it can never pass for an object colour.
    values = style.background_value + (smooth - smooth.mean()) * (style.background_value / 160.0) + grain
    gray = np.clip(values, 0, 2 * style.background_value + 20).astype(np.uint8)
    return Image.fromarray(np.stack([gray] * 3, axis=-1))


def shape_polygon(obj: SceneObject, cx: float, cy: float, radius: float) -> list[tuple[float, float]]:
    """Vertices of a non-circle shape inscribed in its bounding circle, rotated by ``obj.angle``."""
    turn = math.radians(obj.angle)
    if obj.shape == "square":
        angles, radii = [math.pi / 4 + k * math.pi / 2 for k in range(4)], [radius] * 4
    elif obj.shape == "triangle":
        angles, radii = [-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3)], [radius] * 3
    elif obj.shape == "hexagon":
        angles, radii = [k * math.pi / 3 for k in range(6)], [radius] * 6
    elif obj.shape == "star":
        angles = [-math.pi / 2 + k * math.pi / 5 for k in range(10)]
        radii = [radius if k % 2 == 0 else radius * STAR_INNER_RATIO for k in range(10)]
    else:
        raise ValueError(f"{obj.shape!r} has no polygon; circles are drawn as ellipses")
    return [(cx + r * math.cos(a + turn), cy + r * math.sin(a + turn)) for a, r in zip(angles, radii)]


def render(scene: Scene, style: RenderStyle) -> Image.Image:
    """Renders the scene as an RGB image of ``scene.width`` × ``scene.height`` pixels."""
    width, height = scene.width, scene.height
    scale = SUPERSAMPLE if style.antialias else 1
    layer = Image.new("RGBA", (width * scale, height * scale), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    outline_width = scale if style.outline else 0
    for obj, fill in zip(scene.objects, style.fills):
        cx, cy = obj.cx * width * scale, obj.cy * height * scale
        radius = obj.d * width * scale / 2
        edge = tuple(int(c * OUTLINE_SHADE) for c in fill) if style.outline else None
        if obj.shape == "circle":
            box = (cx - radius, cy - radius, cx + radius, cy + radius)
            draw.ellipse(box, fill=fill, outline=edge, width=outline_width)
        else:
            draw.polygon(shape_polygon(obj, cx, cy, radius), fill=fill, outline=edge, width=outline_width)
    if scale > 1:
        layer = layer.resize((width, height), Image.Resampling.BOX)
    image = _background(style, width, height)
    image.paste(layer, (0, 0), layer)
    return image
