"""The indexer's decoding stage, run in worker processes: read, hash, decode and letterbox image files.

It imports no torch, so workers start in a fraction of a second and stay small.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmodal.data.images import MAX_PIXELS, ImageSkipped, read_image, stat_file
from mmodal.encoders.pixels import letterboxed_array
from mmodal.indexes.metadata import ImageFile


@dataclass(frozen=True)
class DecodedFile(ImageFile):
    pixels: np.ndarray  # (3, S, S) uint8, letterboxed


@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str
    size: int
    mtime_ns: int


def decode_files(paths: list[str], image_size: int, max_pixels: int = MAX_PIXELS) -> list[DecodedFile | SkippedFile]:
    """Decodes a chunk of files; a file that cannot be used comes back as a SkippedFile with its reason."""
    results: list[DecodedFile | SkippedFile] = []
    for path in paths:
        try:
            image = read_image(path, max_pixels=max_pixels, draft_size=image_size)
            pixels = letterboxed_array(image.image, image_size)
        except Exception as error:  # one odd file must never stop a run: it is skipped with its reason
            unexpected = f"cannot use it: {type(error).__name__}: {error}"
            reason = error.reason if isinstance(error, ImageSkipped) else unexpected
            results.append(_skipped(path, reason))
            continue
        results.append(
            DecodedFile(
                path, image.content_hash, image.size, image.mtime_ns, image.width, image.height, image.format, pixels
            )
        )
    return results


def _skipped(path: str, reason: str) -> SkippedFile:
    try:
        stat = stat_file(path)
        size, mtime_ns = stat.size, stat.mtime_ns
    except ImageSkipped:
        size, mtime_ns = -1, -1
    return SkippedFile(path, reason, size, mtime_ns)
