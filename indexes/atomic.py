"""Atomic file writes, for every file mmodal writes: write beside the target, fsync, rename, fsync the folder, so
a crash leaves the old file or the new one, never a mix. Torch-free, so the index layer and everything above it
share this one helper."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Opens a temporary file beside ``path``; on a clean exit it is fsynced and renamed over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        os.chmod(tmp, default_file_mode())  # mkstemp makes files private; give them the usual permissions
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def replace_file(partial: str | os.PathLike, target: str | os.PathLike) -> None:
    """Makes a fully written ``partial`` file (one a library wrote itself) durable and renames it over ``target``."""
    partial, target = Path(partial), Path(target)
    with open(partial, "rb") as f:
        os.fsync(f.fileno())
    os.replace(partial, target)
    _fsync_dir(target.parent)


def fsync_tree(folder: str | os.PathLike) -> None:
    """Makes every file below ``folder``, and the folder itself, durable (before a rename publishes it)."""
    folder = Path(folder)
    for file in folder.rglob("*"):
        if file.is_file():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(folder)


def replace_folder(partial: str | os.PathLike, target: str | os.PathLike) -> None:
    """Makes every file of a fully written ``partial`` folder durable and puts it in ``target``'s place."""
    partial, target = Path(partial), Path(target)
    fsync_tree(partial)
    os.chmod(partial, default_file_mode(folder=True))  # mkdtemp makes folders private
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(partial, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(partial, target)
    _fsync_dir(target.parent)


def default_file_mode(folder: bool = False) -> int:
    """The mode a plainly created file (or folder) gets under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if folder else 0o666) & ~mask


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json(path: str | os.PathLike, data) -> None:
    """Atomically writes ``data`` as indented JSON."""
    with atomic_open(path) as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Atomically writes one JSON object per line."""
    with atomic_open(path) as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically writes raw bytes."""
    with atomic_open(path, "wb") as f:
        f.write(data)
