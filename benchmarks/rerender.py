"""Re-draw every image of a Shapes dataset with an independent second renderer, to measure whether a model
generalises beyond the project's own renderer.

    python benchmarks/rerender.py SRC_DATASET_DIR OUT_DIR [--seed 7]

OUT becomes a copy of SRC in which every image listed in images.jsonl is replaced by a new drawing of its scene
graph (same file name and format; JPEG quality drawn from 60-95), and each record's ``render`` field describes the
new drawing. Every other file and field is copied unchanged. The drawing is implemented from the text of
``docs/shapes-world.md`` alone and deliberately imports nothing from ``mmodal.shapes``; its style choices
(background, colour jitter, edges, outline, star proportions, blur) are drawn per image from a generator seeded
with ``--seed`` and the image's line number, so a run is reproducible.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

# Canonical sRGB colours of the spec; each channel is jittered by up to +-24 per object.
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (240, 220, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "cyan": (40, 210, 220),
    "white": (245, 245, 245),
}
JITTER = 24
SHAPES = ("circle", "square", "triangle", "star", "hexagon")
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


# ---------------------------------------------------------------- style


def sample_style(rng: np.random.Generator, n_objects: int, colors: list[str], jpeg: bool) -> dict:
    """Every per-image drawing choice, as a JSON-ready dict (it becomes the record's ``render`` field)."""
    background = str(rng.choice(["black", "gray", "gradient", "noise"]))
    edges = str(rng.choice(["aliased", "ss3", "ss5"]))
    scale = {"aliased": 1, "ss3": 3, "ss5": 5}[edges]
    outline = str(rng.choice(["none", "darker", "lighter"]))
    fills = []
    for c in colors:
        base = np.array(COLORS[c])
        fills.append(np.clip(base + rng.integers(-JITTER, JITTER + 1, 3), 0, 255).astype(int).tolist())
    style = {
        "renderer": "benchmarks/rerender.py",
        "background": background,
        "antialias": scale > 1,
        "supersample": scale,
        "downsample": str(rng.choice(["lanczos", "box"])) if scale > 1 else None,
        "outline": outline != "none",
        "outline_shade": None if outline == "none" else outline,
        "outline_px": int(rng.integers(1, 3)) if outline != "none" else 0,
        "outline_mix": round(float(rng.uniform(0.35, 0.6)), 3) if outline != "none" else None,
        "star_inner_ratio": round(float(rng.uniform(0.38, 0.50)), 4),
        "fills": fills,
        "blur_radius": round(float(rng.uniform(0.3, 0.6)), 3) if rng.random() < 0.3 else None,
        "background_seed": int(rng.integers(0, 2**31 - 1)),
    }
    if jpeg:
        style["jpeg_quality"] = int(rng.integers(60, 96))
    return style


# ---------------------------------------------------------------- background


def draw_background(style: dict, width: int, height: int) -> np.ndarray:
    """float32 HxWx3 array in 0..255, dark and neutral; style gains ``background_value`` (its mean)."""
    rng = np.random.default_rng(style["background_seed"])
    kind = style["background"]
    if kind == "black":
        field = np.zeros((height, width), np.float32)
    elif kind == "gray":
        field = np.full((height, width), float(rng.integers(30, 81)), np.float32)
    elif kind == "gradient":
        # a linear ramp along a vertical or diagonal direction, from lo to hi (mean (lo + hi) / 2 < 90)
        lo = float(rng.uniform(0, 40))
        hi = float(rng.uniform(lo + 25, 115.0))
        direction = float(rng.choice([90.0, 270.0, 45.0, 135.0, 225.0, 315.0]))
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        t = xs / max(width - 1, 1) * math.cos(math.radians(direction))
        t += ys / max(height - 1, 1) * math.sin(math.radians(direction))
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        field = lo + (hi - lo) * t
        style["gradient"] = {"from": round(lo, 1), "to": round(hi, 1), "direction_deg": direction}
    else:
        # blotches: a sum of random isotropic Gaussian bumps and dips, re-centred on a dark mean, plus speckle
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        field = np.zeros((height, width), np.float32)
        side = min(width, height)
        for _ in range(int(rng.integers(4, 13))):
            x0, y0 = rng.uniform(-0.1, 1.1) * width, rng.uniform(-0.1, 1.1) * height
            sigma = rng.uniform(0.05, 0.3) * side
            field += rng.uniform(-30, 40) * np.exp(-((xs - x0) ** 2 + (ys - y0) ** 2) / (2 * sigma**2))
        field += rng.normal(0.0, rng.uniform(2, 9), field.shape).astype(np.float32)
        field += float(rng.uniform(30, 70)) - float(field.mean())
        field = np.clip(field, 0, 140)
    img = np.repeat(field[:, :, None], 3, axis=2)
    if kind == "noise":  # a little independent per-channel speckle, far too weak to read as a colour
        img += rng.normal(0.0, 2.5, img.shape).astype(np.float32)
        img = np.clip(img, 0, 150)
    style["background_value"] = round(float(img.mean()), 1)
    return img


# ---------------------------------------------------------------- geometry


def outline_points(shape: str, cx: float, cy: float, radius: float, angle: float, star_ratio: float) -> np.ndarray:
    """Vertices (Nx2, pixel units, y down) of a shape inscribed in the circle of the given centre and radius.

    At angle 0 the square is axis-aligned, the triangle and the star point up and the hexagon has a flat top and
    bottom; a positive angle turns the shape counter-clockwise as seen on screen.
    """
    turn = math.radians(angle)
    if shape == "circle":
        n = max(24, int(2 * math.pi * radius))  # about one vertex per pixel of circumference
        phis = np.linspace(0, 2 * math.pi, n, endpoint=False)
        radii = np.full(n, radius)
        turn = 0.0
    elif shape == "square":
        phis, radii = np.radians([45, 135, 225, 315]), np.full(4, radius)
    elif shape == "hexagon":
        phis, radii = np.radians(np.arange(6) * 60.0), np.full(6, radius)
    elif shape == "triangle":
        phis, radii = np.radians(90 + np.arange(3) * 120.0), np.full(3, radius)
    elif shape == "star":
        phis = np.radians(90 + np.arange(10) * 36.0)
        radii = np.where(np.arange(10) % 2 == 0, radius, radius * star_ratio)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    phis = phis + turn
    # maths angles (counter-clockwise, y up) -> screen coordinates (y down)
    return np.stack([cx + radii * np.cos(phis), cy - radii * np.sin(phis)], axis=1)


def inset(points: np.ndarray, width: float) -> np.ndarray:
    """The polygon with every edge moved ``width`` inwards (mitred corners), for a simple polygon."""
    n = len(points)
    area2 = float(np.sum(points[:, 0] * np.roll(points[:, 1], -1) - np.roll(points[:, 0], -1) * points[:, 1]))
    sign = 1.0 if area2 > 0 else -1.0
    out = np.empty_like(points)
    for i in range(n):
        p_prev, p, p_next = points[i - 1], points[i], points[(i + 1) % n]
        e1, e2 = p - p_prev, p_next - p
        # inward unit normals of the two edges meeting at p
        n1 = sign * np.array([-e1[1], e1[0]]) / np.hypot(*e1)
        n2 = sign * np.array([-e2[1], e2[0]]) / np.hypot(*e2)
        bis = n1 + n2
        cos_half = float(np.dot(bis, n1)) / max(float(np.hypot(*bis)), 1e-9)
        out[i] = p + bis / max(float(np.hypot(*bis)), 1e-9) * width / max(cos_half, 0.2)
    return out


def centre_clearance(points: np.ndarray, cx: float, cy: float) -> float:
    """Distance from the centre to the nearest edge of the polygon."""
    a, b = points, np.roll(points, -1, axis=0)
    ab, ac = b - a, np.array([cx, cy]) - a
    t = np.clip(np.sum(ac * ab, axis=1) / np.sum(ab * ab, axis=1), 0, 1)
    return float(np.min(np.hypot(*(a + t[:, None] * ab - np.array([cx, cy])).T)))


def shade(fill: list[int], how: str, mix: float) -> tuple[int, int, int]:
    """A darker or lighter shade of the fill; white objects always get the darker shade."""
    f = np.array(fill, float)
    if how == "lighter" and f.min() < 200:
        out = f + (255 - f) * mix
    else:
        out = f * (1 - mix)
    return tuple(int(round(v)) for v in np.clip(out, 0, 255))


# ---------------------------------------------------------------- drawing


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an HxWx3 float array, edges extended."""
    r = max(1, int(math.ceil(3 * sigma)))
    k = np.exp(-(np.arange(-r, r + 1) ** 2) / (2 * sigma**2))
    k /= k.sum()
    for axis in (0, 1):
        pad = [(0, 0)] * 3
        pad[axis] = (r, r)
        p = np.pad(img, pad, mode="edge")
        size = img.shape[axis]
        img = sum(w * (p[i : i + size] if axis == 0 else p[:, i : i + size]) for i, w in enumerate(k))
    return img


def draw(scene: dict, style: dict) -> Image.Image:
    """An RGB image of the scene graph in the given style."""
    width, height = int(scene["width"]), int(scene["height"])
    s = style["supersample"]
    background = draw_background(style, width, height)

    # Shapes go onto a transparent layer s times larger; a pixel of the layer is lit when its centre is inside.
    layer = Image.new("RGBA", (width * s, height * s), (0, 0, 0, 0))
    pen = ImageDraw.Draw(layer)

    def big(points: np.ndarray) -> list[tuple[float, float]]:
        # continuous image coordinates -> coordinates of the large layer, where integers are pixel centres
        return [(float(x) * s - 0.5, float(y) * s - 0.5) for x, y in points]

    outline_px = []
    for obj, fill in zip(scene["objects"], style["fills"]):
        if obj["shape"] not in SHAPES or obj["color"] not in COLORS:
            raise ValueError(f"object outside the spec: {obj}")
        cx, cy, radius = obj["cx"] * width, obj["cy"] * height, obj["d"] * width / 2
        angle = 0.0 if obj["shape"] == "circle" else float(obj.get("angle", 0.0))
        points = outline_points(obj["shape"], cx, cy, radius, angle, style["star_inner_ratio"])
        w = float(style["outline_px"])
        # keep the outline away from the centre of tiny shapes (their centre must show the fill colour)
        clearance = centre_clearance(points, cx, cy)
        while w > 0 and clearance - w < 1.6:
            w -= 1
        outline_px.append(int(w))
        if w > 0:
            pen.polygon(big(points), fill=(*shade(fill, style["outline_shade"], style["outline_mix"]), 255))
            points = inset(points, w)
        pen.polygon(big(points), fill=(*fill, 255))
    style["outline_px_per_object"] = outline_px

    if s > 1:
        resample = Image.Resampling.LANCZOS if style["downsample"] == "lanczos" else Image.Resampling.BOX
        layer = layer.resize((width, height), resample)  # Pillow resizes RGBA premultiplied
    rgba = np.asarray(layer, dtype=np.float32)
    alpha = rgba[:, :, 3:4] / 255.0
    img = background * (1 - alpha) + rgba[:, :, :3] * alpha
    if style["blur_radius"]:
        img = gaussian_blur(img, style["blur_radius"])
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB")


# ---------------------------------------------------------------- dataset


def image_format(src: Path) -> str:
    """The Pillow format name of a source image (by content, falling back to the extension)."""
    try:
        with Image.open(src) as im:
            return str(im.format)
    except OSError:
        return IMAGE_FORMATS.get(src.suffix.lower(), "PNG")


def rerender(src: Path, out: Path, seed: int, force: bool = False) -> int:
    """Writes the re-rendered copy of src to out (through out.partial); returns the number of images drawn."""
    if not (src / "images.jsonl").is_file():
        raise SystemExit(f"{src}: no images.jsonl, not a dataset folder")
    if out.exists() and not force:
        raise SystemExit(f"{out} exists (pass --force to replace it)")
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    lines = (src / "images.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    redrawn = {Path(r["file"]).as_posix() for r in records}
    if missing := [r["id"] for r in records if not r.get("scene")]:
        raise SystemExit(f"{src}: {len(missing)} images have no scene graph to redraw (first: {missing[0]})")

    # everything except images.jsonl and the images it lists is copied as it is (dataset.json, texts, audio)
    partial.mkdir(parents=True)
    for f in sorted(src.rglob("*")):
        rel = f.relative_to(src).as_posix()
        if f.is_dir() or rel == "images.jsonl" or rel in redrawn:
            continue
        (partial / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, partial / rel)

    new_lines = []
    for index, rec in enumerate(tqdm(records, desc="rerender", unit="img")):
        rel = Path(rec["file"])
        if rel.is_absolute() or ".." in rel.parts:
            raise SystemExit(f"image {rec['id']}: path {rec['file']} leaves the dataset folder")
        fmt = image_format(src / rel)
        scene = rec["scene"]
        rng = np.random.default_rng([seed, index])
        style = sample_style(rng, len(scene["objects"]), [o["color"] for o in scene["objects"]], fmt == "JPEG")
        image = draw(scene, style)
        (partial / rel).parent.mkdir(parents=True, exist_ok=True)
        if fmt == "JPEG":
            image.save(partial / rel, "JPEG", quality=style["jpeg_quality"])
        else:
            image.save(partial / rel, fmt)
        new = dict(rec)
        new.pop("style", None)
        new["render"] = style  # replaces the source renderer's description (same key position when present)
        new_lines.append(json.dumps(new))
    (partial / "images.jsonl").write_text("\n".join(new_lines) + "\n", encoding="utf-8")

    if out.exists():
        old = out.with_name(out.name + ".old")
        out.rename(old)
        partial.rename(out)
        shutil.rmtree(old)
    else:
        partial.rename(out)
    return len(records)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path, help="source dataset folder")
    ap.add_argument("out", type=Path, help="output dataset folder (written to OUT.partial, then renamed)")
    ap.add_argument("--seed", type=int, default=7, help="seed of the per-image style choices (default 7)")
    ap.add_argument("--force", action="store_true", help="replace OUT when it exists")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    n = rerender(args.src, args.out, args.seed, args.force)
    print(f"re-rendered {n} images into {args.out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
