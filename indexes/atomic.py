"""Crash-safe replacement of index files: write aside, fsync, rename, fsync the folder."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def replace_file(partial: Path, target: Path) -> None:
    """Makes a fully written ``partial`` file durable and renames it over ``target``."""
    with open(partial, "rb") as f:
        os.fsync(f.fileno())
    os.replace(partial, target)
    with contextlib.suppress(OSError):
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes(target: Path, data: bytes) -> None:
    partial = target.with_name(f".{target.name}.partial")
    partial.write_bytes(data)
    replace_file(partial, target)
