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

from mmodal.data.decode import DecodedFile, SkippedFile, decode_files
from mmodal.data.images import ImageSkipped, stat_file, walk_images
from mmodal.encoders.pixels import letterbox_frame
from mmodal.indexes.folders import open_index
from mmodal.indexes.metadata import NewItem, present_slots
from mmodal.indexes.protocol import Index
from mmodal.retrieval import Model
from mmodal.workers import worker_pool

log = logging.getLogger(__name__)

FILES_PER_TASK = 16  # files a worker decodes per task: enough to amortise the inter-process hop
ENGINES = ("local", "ray")
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
    model: Model,
    roots: Iterable[str | os.PathLike],
    index_dir: str | os.PathLike,
    *,
    batch_size: int = 64,
    workers: int | None = None,
    factory: str | None = None,
    show_progress: bool = True,
    engine: str = "local",
    ray_address: str | None = None,
    shards: int | None = None,
) -> IndexSummary:
    """Adds the images under ``roots`` to the index in ``index_dir`` (created when missing).

    With no roots, re-scans the folders indexed before. Unchanged files cost one ``stat`` each and no model
    work; files removed from disk are removed from the index. ``engine="ray"`` decodes and encodes on a Ray
    cluster (:mod:`mmodal.ray_engine`, at ``ray_address`` or on this machine) instead of local workers.
    ``shards`` > 1 makes a new index a sharded one (:mod:`mmodal.indexes.shards`); an existing index keeps its layout.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    started = time.perf_counter()
    summary = IndexSummary()
    opened = open_index(index_dir, "w", model.identity, shards=shards, factory=factory, model_source=model.source or "")
    with opened as index:
        roots = [os.path.abspath(os.fspath(r)) for r in roots] or index.roots()
        if not roots:
            raise ValueError(f"{index_dir} has no indexed folders yet; name the folders or files to index")
        index.add_roots(roots)
        pending = _changed_files(index, roots, summary)
        try:
            _encode_files(
                model,
                index,
                pending,
                summary,
                batch_size,
                workers or default_workers(),
                show_progress,
                engine,
                ray_address,
            )
        finally:
            summary.removed = _remove_vanished(index, roots)
            added, removed = index.sync()
            log.debug("index file: %d vectors added, %d removed", added, removed)
            summary.images_in_index = index.searchable
            summary.index_type = index.manifest.factory
            summary.seconds = time.perf_counter() - started
    return summary


def _changed_files(index: Index, roots: list[str], summary: IndexSummary) -> list[str]:
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
    model: Model,
    index: Index,
    paths: list[str],
    summary: IndexSummary,
    batch_size: int,
    workers: int,
    show_progress: bool,
    engine: str = "local",
    ray_address: str | None = None,
) -> None:
    if not paths:
        return
    progress = tqdm(total=len(paths), desc="indexing", unit="img", disable=not show_progress or None, smoothing=0.1)
    to_encode: list[DecodedFile | NewItem] = []  # a NewItem comes encoded already (by the Ray engine)
    relinked: list[tuple[str, int, int, int]] = []
    skipped: list[SkippedFile] = []

    def take(result: DecodedFile | NewItem | SkippedFile) -> None:
        if isinstance(result, SkippedFile):
            skipped.append(result)
        elif (item_id := index.item_for_hash(result.content_hash)) is not None:
            relinked.append((result.path, item_id, result.size, result.mtime_ns))
        else:
            to_encode.append(result)

    def flush() -> None:
        new_items = _new_items(model, to_encode)
        new_ids = index.write_batch(new_items, relinked, [(s.path, s.reason, s.size, s.mtime_ns) for s in skipped])
        summary.indexed += len(new_ids)
        summary.relinked += len(new_items) - len(new_ids)  # copies that arrived together in this batch
        summary.relinked += len(relinked)
        summary.skipped.extend((s.path, s.reason) for s in skipped)
        progress.update(len(to_encode) + len(relinked) + len(skipped))
        to_encode.clear()
        relinked.clear()
        skipped.clear()

    if engine == "ray":
        records = _encoded_on_ray(model, index, paths, batch_size, ray_address)
    else:
        records = _decoded_locally(paths, model.input_size, batch_size, workers)
    try:
        for result in records:
            take(result)
            if len(to_encode) >= batch_size:
                flush()
        flush()
    finally:
        records.close()  # stops the decoding workers now, also when a batch failed
        progress.close()


def _new_items(model: Model, files: list[DecodedFile | NewItem]) -> list[NewItem]:
    """The batch as NewItems, in order: decoded files encoded now, encoded ones as they are."""
    decoded = [f for f in files if isinstance(f, DecodedFile)]
    if not decoded:
        return list(files)
    pixels = torch.from_numpy(np.stack([d.pixels for d in decoded]))
    frames = torch.tensor([letterbox_frame(d.width, d.height) for d in decoded])
    vectors, slots = model.encode_pixels(pixels, frames)
    encoded = iter(
        NewItem.encoded(d, v, present_slots(s))
        for d, v, s in zip(decoded, vectors, slots if slots is not None else [None] * len(vectors))
    )
    return [next(encoded) if isinstance(f, DecodedFile) else f for f in files]


def _decoded_locally(paths: list[str], image_size: int, batch_size: int, workers: int) -> Iterator:
    """Decoded files (or skipped ones) in the order of ``paths``, from a pool of worker processes."""
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
                yield from in_flight.popleft().result()
        finally:
            for future in in_flight:
                future.cancel()


def _encoded_on_ray(model: Model, index: Index, paths: list[str], batch_size: int, address):
    from mmodal.ray_engine import encode_with_ray

    if not model.source:
        raise ValueError("--engine ray loads the model again on each actor: load it by name or folder (--model)")
    return encode_with_ray(
        model.source, paths, model.input_size, model.identity.slot_dim, index.folder, batch_size, address
    )


def _remove_vanished(index: Index, roots: list[str]) -> int:
    """Forgets files under the roots that are gone from disk; returns how many."""
    gone = [p for root in roots for p in index.paths_under(root) if not os.path.exists(p)]
    if gone:
        index.remove_paths(gone)
    return len(gone)
