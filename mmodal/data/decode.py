"""The indexer's decoding stage, run in worker processes: read, hash, decode and letterbox image files.

It imports no torch, so workers start in a fraction of a second and stay small.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

from encoders.pixels import letterboxed_array
from mmodal.data.images import MAX_PIXELS, ImageSkipped, read_image, stat_file


@dataclass(frozen=True)
class DecodedFile:
    path: str
    content_hash: str
    size: int
    mtime_ns: int
    width: int
    height: int
    format: str | None
    pixels: np.ndarray  # (3, S, S) uint8, letterboxed


@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str
    size: int
    mtime_ns: int


def start_worker(indexer_pid: int) -> None:
    """Runs first in each decoding worker: it dies with the indexer, even when the indexer is killed -9.

    A worker's parent is the fork server, and the fork server lives as long as any worker does (each holds
    the fork server's liveness pipe), so a parent-death signal alone would leave both behind; the worker
    watches the indexer itself.
    """
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    try:
        os.kill(indexer_pid, 0)
    except ProcessLookupError:  # the indexer died before the line above took effect
        os._exit(1)
    threading.Thread(target=_exit_with, args=(indexer_pid,), daemon=True, name="indexer-watch").start()


def _exit_with(pid: int) -> None:
    """Ends this process when ``pid`` ends: a pidfd turns readable then; elsewhere, poll once a second."""
    try:
        select.select([os.pidfd_open(pid)], [], [])
    except (AttributeError, OSError):
        while True:
            time.sleep(1.0)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
    os._exit(1)


def decode_files(paths: list[str], image_size: int, max_pixels: int = MAX_PIXELS) -> list[DecodedFile | SkippedFile]:
    """Decodes a chunk of files; a file that cannot be used comes back as a SkippedFile with its reason."""
    results: list[DecodedFile | SkippedFile] = []
    for path in paths:
        try:
            image = read_image(path, max_pixels=max_pixels, draft_size=image_size)
            pixels = letterboxed_array(image.image, image_size)
        except ImageSkipped as skipped:
            try:
                stat = stat_file(path)
                size, mtime_ns = stat.size, stat.mtime_ns
            except ImageSkipped:
                size, mtime_ns = -1, -1
            results.append(SkippedFile(path, skipped.reason, size, mtime_ns))
            continue
        results.append(
            DecodedFile(
                path, image.content_hash, image.size, image.mtime_ns, image.width, image.height, image.format, pixels
            )
        )
    return results
