"""The indexing pipeline: walk → decode (worker processes) → encode in batches → write, streaming and resumable.

Each encoded batch is committed to the index's metadata store in one transaction, together with the files
found to be copies of indexed images and the files skipped with their reason. A run stopped at any moment
(Ctrl-C, kill -9, power loss) keeps every committed batch; the same command again treats those files as
unchanged and goes on with the rest. The FAISS file is brought level with the store at the end.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from encoders.pixels import letterbox_frame
from indexes.collection import ImageIndex
from indexes.metadata import NewItem
from mmodal.data.decode import DecodedFile, SkippedFile, decode_files
from mmodal.data.images import ImageSkipped, stat_file, walk_images
from mmodal.retrieval import RetrievalModel
from mmodal.workers import worker_pool

log = logging.getLogger(__name__)

FILES_PER_TASK = 16  # files a worker decodes per task: enough to amortise the inter-process hop
BATCHES_AHEAD = 4  # decoded batches that may wait for the encoder: keeps workers busy while it runs, bounds memory


@dataclass
class IndexSummary:
    indexed: int = 0  # new images encoded
    unchanged: int = 0  # files seen before with the same size and time stamp
    relinked: int = 0  # files whose content was already indexed (copies, moved or renamed files)
    removed: int = 0  # files gone from disk since the last run
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) found in this run
    seconds: float = 0.0
    images_in_index: int = 0
    index_type: str = ""

    def to_dict(self) -> dict:
        return {
            "indexed": self.indexed,
            "unchanged": self.unchanged,
            "relinked": self.relinked,
            "removed": self.removed,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "seconds": round(self.seconds, 2),
            "images_in_index": self.images_in_index,
            "index_type": self.index_type,
        }

    def format(self, max_skipped: int = 20) -> str:
        rate = self.indexed / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"indexed {self.indexed} new, {self.unchanged} unchanged, {self.relinked} copies or moved, "
            f"{len(self.skipped)} skipped, {self.removed} removed in {self.seconds:.1f} s ({rate:.0f} images/s)",
            f"the index holds {self.images_in_index} images ({self.index_type})",
        ]
        for path, reason in self.skipped[:max_skipped]:
            lines.append(f"  skipped {path}: {reason}")
        if len(self.skipped) > max_skipped:
            lines.append(f"  … and {len(self.skipped) - max_skipped} more skipped files (see `mmodal info --skipped`)")
        return "\n".join(lines)


def default_workers() -> int:
    """Decoding workers: one per core; they sleep while the encoder runs, and a deep queue keeps it fed."""
    return os.cpu_count() or 1


def index_collection(
    model: RetrievalModel,
    roots: Iterable[str | os.PathLike],
    index_dir: str | os.PathLike,
    *,
    batch_size: int = 64,
    workers: int | None = None,
    factory: str | None = None,
    show_progress: bool = True,
) -> IndexSummary:
    """Adds the images under ``roots`` to the index in ``index_dir`` (created when missing).

    With no roots, re-scans the folders indexed before. Unchanged files cost one ``stat`` each and no model
    work; files removed from disk are removed from the index.
    """
    started = time.perf_counter()
    summary = IndexSummary()
    with ImageIndex.open_for_writing(
        index_dir, model.identity, factory=factory, model_source=model.source or ""
    ) as index:
        roots = [os.path.abspath(os.fspath(r)) for r in roots] or index.roots()
        if not roots:
            raise ValueError(f"{index_dir} has no indexed folders yet; name the folders or files to index")
        index.add_roots(roots)
        pending = _changed_files(index, roots, summary)
        try:
            _encode_files(model, index, pending, summary, batch_size, workers or default_workers(), show_progress)
        finally:
            summary.removed = _remove_vanished(index, roots)
            added, removed = index.sync()
            log.debug("index file: %d vectors added, %d removed", added, removed)
            summary.images_in_index = index.searchable
            summary.index_type = index.manifest.factory
            summary.seconds = time.perf_counter() - started
    return summary


def _changed_files(index: ImageIndex, roots: list[str], summary: IndexSummary) -> list[str]:
    """Walks the roots; returns the files that are new or changed since they were last seen."""
    pending = []
    walk_errors: list[tuple[str, str]] = []
    walk = walk_images(roots, on_error=lambda p, r: walk_errors.append((p, r)))
    for path in tqdm(walk, desc="scanning", unit=" files", leave=False, disable=None):
        try:
            stat = stat_file(path)
        except ImageSkipped as skipped:
            summary.skipped.append((path, skipped.reason))
            continue
        if index.file_state(path) == (stat.size, stat.mtime_ns):
            summary.unchanged += 1
        else:
            pending.append(path)
    summary.skipped.extend(walk_errors)
    return pending


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _encode_files(
    model: RetrievalModel,
    index: ImageIndex,
    paths: list[str],
    summary: IndexSummary,
    batch_size: int,
    workers: int,
    show_progress: bool,
) -> None:
    if not paths:
        return
    image_size = model.input_size
    progress = tqdm(total=len(paths), desc="indexing", unit="img", disable=not show_progress or None, smoothing=0.1)
    to_encode: list[DecodedFile] = []
    relinked: list[tuple[str, int, int, int]] = []
    skipped: list[SkippedFile] = []

    def flush() -> None:
        new_items: list[NewItem] = []
        if to_encode:
            pixels = torch.from_numpy(np.stack([d.pixels for d in to_encode]))
            frames = torch.tensor([letterbox_frame(d.width, d.height) for d in to_encode])
            vectors, slots = model.encode_pixels(pixels, frames)
            new_items = [
                NewItem.encoded(d, v, None if s is None else s[s[:, 0] > 0])
                for d, v, s in zip(to_encode, vectors, slots if slots is not None else [None] * len(vectors))
            ]
        new_ids = index.write_batch(new_items, relinked, [(s.path, s.reason, s.size, s.mtime_ns) for s in skipped])
        summary.indexed += len(new_ids)
        summary.relinked += len(new_items) - len(new_ids)  # copies that arrived together in this batch
        summary.relinked += len(relinked)
        summary.skipped.extend((s.path, s.reason) for s in skipped)
        progress.update(len(to_encode) + len(relinked) + len(skipped))
        to_encode.clear()
        relinked.clear()
        skipped.clear()

    with worker_pool(workers, ["mmodal.data.decode"]) as pool:  # workers need only Pillow and numpy
        tasks = _chunks(paths, FILES_PER_TASK)
        in_flight: deque = deque()
        limit = workers + BATCHES_AHEAD * -(-batch_size // FILES_PER_TASK)
        try:
            while True:
                while len(in_flight) < limit and (chunk := next(tasks, None)):
                    in_flight.append(pool.submit(decode_files, chunk, image_size))
                if not in_flight:
                    break
                for result in in_flight.popleft().result():
                    if isinstance(result, SkippedFile):
                        skipped.append(result)
                    elif (item_id := index.item_for_hash(result.content_hash)) is not None:
                        relinked.append((result.path, item_id, result.size, result.mtime_ns))
                    else:
                        to_encode.append(result)
                if len(to_encode) >= batch_size:
                    flush()
            flush()
        except BaseException:
            for future in in_flight:
                future.cancel()
            raise
        finally:
            progress.close()


def _remove_vanished(index: ImageIndex, roots: list[str]) -> int:
    """Forgets files under the roots that are gone from disk; returns how many."""
    gone = [p for root in roots for p in index.paths_under(root) if not os.path.exists(p)]
    if gone:
        index.remove_paths(gone)
    return len(gone)
