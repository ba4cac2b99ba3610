"""Builds a folder of the image files an indexer meets in the wild, good and bad, small enough to make in a blink.

Good images come with a known brightness pattern so that tests can check that decoding kept it: most are
bright on their left half and dark on their right half.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

WIDTH, HEIGHT = 40, 20

PLAIN_PNG = "plain.png"
ROTATED_JPEG = "rotated_exif6.jpg"
CMYK_JPEG = "cmyk.jpg"
PALETTE_PNG = "palette_transparent.png"
RGBA_PNG = "rgba.png"
GRAY16_PNG = "gray16.png"
FLOAT_TIFF = "float32.tif"
ANIMATED_GIF = "animated.gif"
ANIMATED_WEBP = "animated.webp"
STILL_WEBP = "photo.webp"
UNICODE_PNG = "café 图像 ü.png"
NESTED_PNG = "nested/inner.png"
LOOP_LINK = "nested/loop"
LINKED_DIR = "linked"
LINKED_PNG = "linked/deep.png"
HIDDEN_DIR = ".vault"
HIDDEN_PNG = ".hidden.png"
NOT_AN_IMAGE_NAME = "notes.txt"

TRUNCATED_PNG = "truncated.png"
TEXT_AS_JPEG = "x.jpg"
EMPTY_PNG = "empty.png"
PILLOW_BOMB_PNG = "bomb_20000.png"
HEADER_BOMB_PNG = "bomb_9000.png"
UNREADABLE_PNG = "unreadable.png"
BROKEN_LINK = "y.png"
FIFO_PNG = "fifo.png"

ANIMATION_COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
EXIF_ORIENTATION_TAG = 0x0112


def bright_left_dark_right(width: int = WIDTH, height: int = HEIGHT, bright: int = 255, dark: int = 0) -> np.ndarray:
    """A grayscale array whose left half is ``bright`` and right half ``dark``."""
    values = np.full((height, width), dark, dtype=np.int64)
    values[:, : width // 2] = bright
    return values


def gradient_rgb(width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """A deterministic RGB pattern that lossless formats must reproduce exactly."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs * 255 // (width - 1), ys * 255 // (height - 1), (xs + ys) % 256], axis=-1).astype(np.uint8)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def write_black_bilevel_png(path: Path, width: int, height: int) -> None:
    """Writes a genuine all-black 1-bit PNG of any size without ever holding its pixels in memory.

    Pillow keeps 1-bit images at a byte per pixel, so a bomb made with it would need gigabytes; the zeros
    here compress to a few tens of kilobytes.
    """
    row = bytes(1 + (width + 7) // 8)  # filter type 0 then the packed bits
    compressor = zlib.compressobj(9)
    rows_per_block = 1000
    block = row * rows_per_block
    parts = [compressor.compress(block) for _ in range(height // rows_per_block)]
    parts.append(compressor.compress(row * (height % rows_per_block)))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale, no interlace
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def _write_good(root: Path) -> list[Path]:
    good: list[Path] = []

    def place(name: str) -> Path:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        good.append(path)
        return path

    Image.fromarray(gradient_rgb()).save(place(PLAIN_PNG))

    # Stored 40×20 and bright on the left; orientation 6 shows it turned a quarter clockwise, 20×40 and bright on top.
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = 6
    stored = Image.fromarray(bright_left_dark_right().astype(np.uint8)).convert("RGB")
    stored.save(place(ROTATED_JPEG), "JPEG", exif=exif, quality=95)

    cmyk = np.zeros((HEIGHT, WIDTH, 4), dtype=np.uint8)
    cmyk[:, WIDTH // 2 :, 3] = 255  # full black ink on the right half
    Image.frombytes("CMYK", (WIDTH, HEIGHT), cmyk.tobytes()).save(place(CMYK_JPEG), "JPEG", quality=95)

    # Index 0 is red and opaque, index 1 green but transparent: a reader that ignores tRNS shows green.
    palette = Image.frombytes("P", (WIDTH, HEIGHT), bright_left_dark_right(bright=0, dark=1).astype(np.uint8).tobytes())
    palette.putpalette([255, 0, 0, 0, 255, 0])
    palette.save(place(PALETTE_PNG), transparency=1)

    rgba = np.full((HEIGHT, WIDTH, 4), 255, dtype=np.uint8)
    rgba[:, :, 3] = bright_left_dark_right()  # white everywhere, but transparent on the right
    Image.fromarray(rgba).save(place(RGBA_PNG))

    Image.fromarray(bright_left_dark_right(bright=60000, dark=1000).astype(np.uint16)).save(place(GRAY16_PNG))

    Image.fromarray(bright_left_dark_right(bright=1, dark=0).astype(np.float32)).save(place(FLOAT_TIFF))

    frames = [Image.new("RGB", (WIDTH, HEIGHT), colour) for colour in ANIMATION_COLOURS]
    frames[0].save(place(ANIMATED_GIF), save_all=True, append_images=frames[1:], duration=50, loop=0)
    frames[0].save(place(ANIMATED_WEBP), save_all=True, append_images=frames[1:], duration=50, lossless=True)
    Image.fromarray(gradient_rgb()).save(place(STILL_WEBP), lossless=True)

    Image.new("RGB", (WIDTH, HEIGHT), (0, 200, 0)).save(place(UNICODE_PNG))
    Image.fromarray(gradient_rgb()).save(place(NESTED_PNG))

    # The only way to this picture is through the symlink: the hidden folder itself is never walked.
    target = root / HIDDEN_DIR / "sub"
    target.mkdir(parents=True)
    Image.fromarray(gradient_rgb()).save(target / Path(LINKED_PNG).name)
    (root / LINKED_DIR).symlink_to(target.relative_to(root), target_is_directory=True)
    good.append(root / LINKED_PNG)

    (root / LOOP_LINK).symlink_to("..", target_is_directory=True)
    Image.fromarray(gradient_rgb()).save(root / HIDDEN_PNG)
    (root / NOT_AN_IMAGE_NAME).write_text("not an image, and not named like one\n", encoding="utf-8")
    return good


def _write_unreadable(path: Path) -> bool:
    """Writes a valid PNG that nobody may read; returns whether it really is unreadable (it is not for root)."""
    Image.fromarray(gradient_rgb()).save(path)
    path.chmod(0)
    try:
        with path.open("rb"):
            return False
    except PermissionError:
        return True


def make_hostile_folder(root: Path) -> tuple[list[Path], dict[Path, str]]:
    """Fills ``root`` with hostile and awkward image files.

    Returns the paths of the good images (every one must decode) and, for each bad file, a substring the
    :class:`~mmodal.data.images.ImageSkipped` reason must contain. ``root`` also holds files that must never be
    walked: a hidden image, a hidden folder (reachable only through the ``linked`` symlink), a text file, and
    a symlink loop ``nested/loop -> ..``.
    """
    root.mkdir(parents=True, exist_ok=True)
    good = _write_good(root)
    bad: dict[Path, str] = {}

    encoded = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(encoded, "PNG")
    whole = encoded.getvalue()
    (root / TRUNCATED_PNG).write_bytes(whole[: len(whole) // 2])
    bad[root / TRUNCATED_PNG] = "truncated or corrupt image"

    (root / TEXT_AS_JPEG).write_text("this is a shopping list, not a photo\n", encoding="utf-8")
    bad[root / TEXT_AS_JPEG] = "not an image"

    (root / EMPTY_PNG).write_bytes(b"")
    bad[root / EMPTY_PNG] = "empty file"

    # 400 megapixels is past twice Pillow's own limit; 81 megapixels passes Pillow but not MAX_PIXELS.
    write_black_bilevel_png(root / PILLOW_BOMB_PNG, 20_000, 20_000)
    bad[root / PILLOW_BOMB_PNG] = "image too large"
    write_black_bilevel_png(root / HEADER_BOMB_PNG, 9_000, 9_000)
    bad[root / HEADER_BOMB_PNG] = "image too large: 9000×9000 pixels"

    unreadable = root / UNREADABLE_PNG
    if _write_unreadable(unreadable):
        bad[unreadable] = "permission denied"
    else:
        good.append(unreadable)

    (root / BROKEN_LINK).symlink_to("no-such-target.png")
    bad[root / BROKEN_LINK] = "broken symlink"

    if hasattr(os, "mkfifo"):
        os.mkfifo(root / FIFO_PNG)
        bad[root / FIFO_PNG] = "not a regular file"
    return good, bad
