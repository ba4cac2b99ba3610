"""A deterministic generator of hostile inputs: image and audio files, texts and API bodies.

Each case is drawn from a seed, so a failure found in a run of ten thousand can be made again alone. What a
case must lead to is part of it: a usable image must be indexed, an unusable one skipped with a reason, a
refused clip or text refused with a message; ``None`` means either way is right, as long as nothing breaks.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image

from reliability.hostile_images import _png_chunk, write_black_bilevel_png

IMAGE_KINDS = (
    "good",
    "tiny",
    "extreme_aspect",
    "wrong_extension",
    "odd_name",
    "truncated",
    "bit_flipped",
    "garbage_after_header",
    "zero_bytes",
    "absurd_dimensions",
    "text_named_image",
    "broken_link",
    "link_loop",
)
AUDIO_KINDS = ("speechlike", "silent", "eight_bit", "stereo_44k", "empty", "nan", "hour_long", "not_audio", "truncated")
TEXT_KINDS = (
    "empty",
    "blank",
    "enormous",
    "control",
    "emoji",
    "right_to_left",
    "null_bytes",
    "markup",
    "format_codes",
    "plain",
)
FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}
ODD_NAMES = ("with space", "new\nline", "tab\there", "ج صورة", "emoji 🐱", "quote'\"", "-dash", "%20encoded", "..dots")
RTL = "ما هذا الشكل؟ אדום עיגול "


@dataclass(frozen=True)
class HostileFile:
    path: Path
    kind: str
    usable: bool | None  # must be indexed / played (True), must be refused (False), either (None)


def _picture(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Noise, so that distinct cases are distinct pictures (no accidental copies)."""
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _encoded(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def _absurd_png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` × ``height`` pixels over a few bytes of data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"x\x9c\x03\x00")
        + _png_chunk(b"IEND", b"")
    )


def write_image_case(root: Path, i: int, kind: str, rng: np.random.Generator) -> HostileFile:
    """Writes case ``i`` of ``kind`` under ``root`` (made unique by ``i``)."""
    fmt = list(FORMATS)[int(rng.integers(len(FORMATS)))]
    stem = f"{i:06d}-{kind}"
    if kind in ("good", "tiny", "extreme_aspect"):
        sizes = {
            "good": (int(rng.integers(16, 200)), int(rng.integers(16, 200))),
            "tiny": (int(rng.integers(1, 4)), int(rng.integers(1, 4))),
            "extreme_aspect": [(4000, 30), (30, 4000), (2000, 2), (2, 2000), (1500, 1)][int(rng.integers(5))],
        }[kind]
        fmt = "PNG" if kind == "extreme_aspect" else fmt
        path = root / f"{stem}{FORMATS[fmt]}"
        path.write_bytes(_encoded(_picture(rng, *sizes), fmt))
        return HostileFile(path, kind, True)
    if kind == "wrong_extension":
        wrong = [e for f, e in FORMATS.items() if f != fmt][int(rng.integers(len(FORMATS) - 1))]
        path = root / f"{stem}{wrong}"
        path.write_bytes(_encoded(_picture(rng, 32, 24), fmt))
        return HostileFile(path, kind, True)
    if kind == "odd_name":
        name = ODD_NAMES[int(rng.integers(len(ODD_NAMES)))]
        if rng.random() < 0.3:  # a name that is not UTF-8 at all
            path = Path(os.fsdecode(root.as_posix().encode() + b"/" + stem.encode() + b" \xff\xfe.png"))
        else:
            path = root / f"{stem} {name}.png"
        path.write_bytes(_encoded(_picture(rng, 40, 30), "PNG"))
        return HostileFile(path, kind, True)
    if kind in ("truncated", "bit_flipped", "garbage_after_header"):
        data = bytearray(_encoded(_picture(rng, 64, 48), fmt))
        if kind == "truncated":
            data = data[: int(len(data) * rng.uniform(0.05, 0.9))]
        elif kind == "bit_flipped":
            for at in rng.integers(0, len(data), size=int(rng.integers(1, 8))):
                data[at] ^= 1 << int(rng.integers(8))
        else:
            data = data[:16] + bytearray(rng.integers(0, 256, size=int(rng.integers(1, 4000)), dtype=np.uint8))
        path = root / f"{stem}{FORMATS[fmt]}"
        path.write_bytes(bytes(data))
        return HostileFile(path, kind, False if kind == "garbage_after_header" and fmt != "BMP" else None)
    if kind == "zero_bytes":
        path = root / f"{stem}{FORMATS[fmt]}"
        path.write_bytes(b"")
        return HostileFile(path, kind, False)
    if kind == "absurd_dimensions":
        path = root / f"{stem}.png"
        if i % 97 == 0:  # now and then a real decompression bomb: tens of kilobytes, 400 megapixels of zeros
            write_black_bilevel_png(path, 20_000, 20_000)
        else:
            side = [(100_000, 100_000), (1, 10**9), (2**31 - 1, 1), (0, 10), (60_000, 60_000)][int(rng.integers(5))]
            path.write_bytes(_absurd_png(*side))
        return HostileFile(path, kind, False)
    if kind == "text_named_image":
        path = root / f"{stem}{FORMATS[fmt]}"
        path.write_text("a shopping list: milk, eggs\n" * int(rng.integers(1, 50)), encoding="utf-8")
        return HostileFile(path, kind, False)
    if kind == "broken_link":
        path = root / f"{stem}.png"
        path.symlink_to(f"missing-{i}.png")
        return HostileFile(path, kind, False)
    if kind == "link_loop":
        path = root / f"{stem}-loop"
        path.symlink_to(".", target_is_directory=True)
        return HostileFile(path, kind, None)
    raise ValueError(f"unknown image case kind {kind!r}")


def write_image_files(root: Path, n: int, seed: int = 0) -> list[HostileFile]:
    """``n`` image cases, the kinds in turn, under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    return [write_image_case(root, i, IMAGE_KINDS[i % len(IMAGE_KINDS)], rng) for i in range(n)]


def write_audio_case(root: Path, i: int, kind: str, rng: np.random.Generator) -> HostileFile:
    path = root / f"{i:06d}-{kind}.wav"
    rate = 16_000
    if kind == "speechlike":
        t = np.arange(int(rate * rng.uniform(0.3, 3.0))) / rate
        wave = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 300) * t) * (1 + np.sin(2 * np.pi * 3 * t))
        soundfile.write(path, wave.astype(np.float32), rate, subtype="PCM_16")
        return HostileFile(path, kind, True)
    if kind == "silent":
        soundfile.write(path, np.zeros(rate, dtype=np.float32), rate, subtype="PCM_16")
        return HostileFile(path, kind, True)
    if kind == "eight_bit":
        soundfile.write(path, rng.uniform(-0.5, 0.5, rate // 2).astype(np.float32), 8000, subtype="PCM_U8")
        return HostileFile(path, kind, True)
    if kind == "stereo_44k":
        soundfile.write(path, rng.uniform(-0.3, 0.3, (44_100, 2)).astype(np.float32), 44_100, subtype="PCM_16")
        return HostileFile(path, kind, True)
    if kind == "empty":
        path.write_bytes(b"")
        return HostileFile(path, kind, False)
    if kind == "nan":
        wave = np.full(rate, np.nan, dtype=np.float32)
        soundfile.write(path, wave, rate, subtype="FLOAT")
        return HostileFile(path, kind, False)
    if kind == "hour_long":
        # An hour at 8 kHz, 8 bit: 29 MB of real samples, written in blocks.
        with soundfile.SoundFile(path, "w", 8000, 1, subtype="PCM_U8") as out:
            block = np.zeros(8000 * 60, dtype=np.float32)
            for _ in range(60):
                out.write(block)
        return HostileFile(path, kind, False)
    if kind == "not_audio":
        path.write_bytes(_encoded(_picture(rng, 20, 20), "PNG") if i % 2 else b"RIFF....WAVEfmt garbage")
        return HostileFile(path, kind, False)
    if kind == "truncated":
        out = io.BytesIO()
        soundfile.write(out, rng.uniform(-0.3, 0.3, rate).astype(np.float32), rate, format="WAV", subtype="PCM_16")
        path.write_bytes(out.getvalue()[: int(rng.integers(4, 60))])
        return HostileFile(path, kind, False)
    raise ValueError(f"unknown audio case kind {kind!r}")


def write_audio_files(root: Path, kinds: tuple[str, ...] = AUDIO_KINDS, seed: int = 0) -> list[HostileFile]:
    """One clip of each kind under ``root`` (clips are reused by many requests: an hour of audio is big)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    return [write_audio_case(root, i, kind, rng) for i, kind in enumerate(kinds)]


def hostile_text(kind: str, rng: np.random.Generator) -> str:
    if kind == "empty":
        return ""
    if kind == "blank":
        return " \t\n " * int(rng.integers(1, 20))
    if kind == "enormous":
        return "a red circle left of a blue square " * 3000  # about 100,000 characters
    if kind == "control":
        return "a red\x1b[31m circle\x07\x08\r\x0b" + "".join(chr(int(c)) for c in rng.integers(1, 32, size=8))
    if kind == "emoji":
        return "a 🔴 circle 🟦 " + "👨‍👩‍👧‍👦" * int(rng.integers(1, 40))
    if kind == "right_to_left":
        return RTL * int(rng.integers(1, 5)) + "\u202eelcric der a"
    if kind == "null_bytes":
        return "a red\x00circle\x00"
    if kind == "markup":
        return "<script>alert(1)</script> ' OR 1=1; -- ../../etc/passwd"
    if kind == "format_codes":
        return "%s %n {0} {__class__} ${HOME} %(x)s"
    if kind == "plain":
        return ["a red circle", "two blue squares", "how many stars are there?", "what color is the star?"][
            int(rng.integers(4))
        ]
    raise ValueError(f"unknown text case kind {kind!r}")


def wrong_typed_values(rng: np.random.Generator) -> object:
    """A JSON value of a type no input expects."""
    choices = [
        None,
        -1,
        10**12,
        1.5e308,
        True,
        [],
        {},
        [[[[[]]]]],
        {"path": "/etc/passwd"},
        {"path": "../../../../etc/passwd", "meta": {"_type": "gradio.FileData"}},
        {"url": "http://127.0.0.1:1/x.png", "meta": {"_type": "gradio.FileData"}},
        "x" * 5000,
        "NaN",
        "Infinity",
    ]
    return choices[int(rng.integers(len(choices)))]
