"""An image index on disk: FAISS vectors, the metadata store and the manifest, kept consistent.

Folder layout: ``manifest.json``, ``metadata.sqlite`` (items, files and vectors; the source of truth),
``vectors.faiss`` (derived from the store) and ``.lock`` (held by the one process allowed to write).
Writers commit batches to the store as they go and call :meth:`ImageIndex.sync` at the end, which
brings the FAISS file level with the store and replaces it atomically. A crash before that leaves the
previous FAISS file readable; the next writer finds the store ahead and catches up.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import faiss
import numpy as np

from mmodal.indexes import vectors
from mmodal.indexes.errors import (
    IndexBusyError,
    IndexNotFoundError,
    ManifestDamagedError,
    ModelMismatchError,
)
from mmodal.indexes.hits import Hit, RowCache, group_near_duplicates
from mmodal.indexes.integrity import (
    INDEX_FILE,
    MODEL_RECORD,
    manifest_from_store,
    read_checked,
    recorded_manifest,
    same_structure,
)
from mmodal.indexes.manifest import MANIFEST_FILE, Manifest, ModelIdentity, file_checksum
from mmodal.indexes.metadata import METADATA_FILE, ItemInfo, MetadataStore

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
SHARDS_FILE = "shards.json"  # beside the shard folders of a sharded index (mmodal.indexes.shards)
_WRITING: set[Path] = set()  # POSIX record locks do not exclude a second writer in the same process
# Rows an index opened for searching keeps in memory (about 2 KB each with slots), so that the candidates that
# searches share are read from SQLite once.
CACHED_ROWS = 20_000


class ImageIndex:
    def __init__(self, folder: Path, manifest: Manifest, store: MetadataStore, index: faiss.Index, lock=None):
        self.folder = folder
        self.manifest = manifest
        self.store = store
        self.index = index
        self._lock = lock
        self._search_index = None
        # A writer changes rows as it goes, so only an index opened for searching keeps them.
        capacity = 0 if lock is not None else CACHED_ROWS
        self._items = RowCache(store.items, capacity)
        self._slots = RowCache(store.slots, capacity)

    # ------------------------------------------------------------------------------------------ opening

    @classmethod
    def open_for_writing(
        cls, folder: str | os.PathLike, model: ModelIdentity, factory: str | None = None, model_source: str = ""
    ):
        """Opens the index in ``folder`` to add to it, creating it when absent; one writer at a time."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        busy = IndexBusyError(f"another mmodal process is writing to {folder}; wait for it to finish")
        if folder.resolve() in _WRITING:
            raise busy
        lock = open(folder / LOCK_FILE, "w")
        try:
            # A POSIX record lock belongs to this process alone: forked workers do not inherit it, and it
            # goes when the process dies, however it dies.
            fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise busy from None
        try:
            rewrite = not (folder / MANIFEST_FILE).exists()
            if not rewrite:
                try:
                    manifest = Manifest.load(folder)
                except ManifestDamagedError as damage:
                    manifest, rewrite = manifest_from_store(folder, damage), True
                    log.warning("%s; rewriting it from the metadata store's record", damage)
                manifest.check_model(model, folder)
                if factory and factory != manifest.factory:
                    manifest.factory, manifest.factory_chosen_by = factory, "user"
            else:
                manifest = Manifest(
                    model=model,
                    model_source=model_source,
                    factory=factory or "Flat",
                    factory_chosen_by="user" if factory else "size",
                )
            store = MetadataStore(folder / METADATA_FILE, manifest.model.dim, manifest.model.slot_dim)
            record = json.dumps({"model": dataclasses.asdict(manifest.model), "model_source": manifest.model_source})
            if store.get_property(MODEL_RECORD) != record:
                store.set_property(MODEL_RECORD, record)
            index = read_checked(folder, manifest, repair=True) or vectors.new_index(manifest.factory, model.dim)
            if rewrite:
                manifest.save(folder)
        except BaseException:
            lock.close()
            raise
        _WRITING.add(folder.resolve())
        return cls(folder, manifest, store, index, lock)

    @classmethod
    def remodel_empty(cls, folder: str | os.PathLike, model: ModelIdentity, model_source: str = "") -> None:
        """Gives an index that holds no image another model: its files go and it starts afresh. Refused when it
        holds images, whose vectors only the model that made them can search."""
        folder = Path(folder)
        with cls.open_for_writing(folder, recorded_manifest(folder).model) as index:
            held = index.count()
            if held:
                raise ModelMismatchError(
                    f"{folder} holds {held} images embedded by model {index.manifest.model.name!r}; another model "
                    "needs another index folder"
                )
        for name in (MANIFEST_FILE, INDEX_FILE, METADATA_FILE, f"{METADATA_FILE}-wal", f"{METADATA_FILE}-shm"):
            (folder / name).unlink(missing_ok=True)
        cls.open_for_writing(folder, model, model_source=model_source).close()

    @classmethod
    def open(cls, folder: str | os.PathLike, model: ModelIdentity | None = None) -> ImageIndex:
        """Opens an index to search it; checks the model and the index file's checksum."""
        folder = Path(folder)
        if not (folder / MANIFEST_FILE).is_file():
            if (folder / SHARDS_FILE).is_file():
                raise IndexNotFoundError(f"{folder} is a sharded index: open it with mmodal.indexes.folders.open_index")
            raise IndexNotFoundError(
                f"no mmodal index in {folder}: build one with `mmodal index PATH --index {folder}`"
            )
        manifest = Manifest.load(folder)
        if model is not None:
            manifest.check_model(model, folder)
        index = read_checked(folder, manifest, repair=False)
        if index is None:
            index = vectors.new_index(manifest.factory, manifest.model.dim)
        store = MetadataStore(folder / METADATA_FILE, manifest.model.dim, manifest.model.slot_dim)
        behind = store.count() - index.ntotal
        if behind > 0:
            log.warning(
                "%d images are stored but not yet searchable (indexing stopped early); "
                "run `mmodal index --index %s` to finish",
                behind,
                folder,
            )
        return cls(folder, manifest, store, index)

    def close(self) -> None:
        self.store.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None
            _WRITING.discard(self.folder.resolve())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ----------------------------------------------------------------------------------------- writing

    def sync(self) -> tuple[int, int]:
        """Brings the FAISS file level with the store (re-choosing the structure as the collection grows)
        and saves it and the manifest atomically. Returns (vectors added, vectors removed)."""
        if self._lock is None:
            raise IndexBusyError("this index was opened for searching; open it for writing to change it")
        count = self.store.count()
        wanted = self.manifest.factory
        if self.manifest.factory_chosen_by == "size":
            wanted = vectors.choose_factory(count, self.manifest.model.dim)
        if (
            wanted != self.manifest.factory
            or not same_structure(self.index, wanted)
            or not self.index.index.is_trained  # IVF needs vectors to train on: build from the store
        ):
            log.info("building a %s index over %d images", wanted, count)
            before = self.index.ntotal
            self.index = vectors.build(wanted, self.store)
            added, removed = max(0, count - before), max(0, before - count)
        else:
            self.index, added, removed = vectors.sync(self.index, self.store)
        if added or removed or not (self.folder / INDEX_FILE).exists() or self.manifest.factory != wanted:
            vectors.save(self.index, self.folder / INDEX_FILE)
            self.manifest.factory = wanted
            self.manifest.count = self.index.ntotal
            self.manifest.index_checksum = file_checksum(self.folder / INDEX_FILE)
            self.manifest.save(self.folder)
        self._search_index = None
        return added, removed

    # ---------------------------------------------------------------------------------------- searching

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """Top-``k`` images for each query vector (Q, D), best first; images gone from the store are dropped."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.shape[1] != self.manifest.model.dim:
            raise ValueError(f"query vectors are {queries.shape[1]}-d; this index holds {self.manifest.model.dim}-d")
        if self.index.ntotal == 0 or k < 1:
            return [[] for _ in queries]
        if self._search_index is None:
            vectors.tune_for_search(self.index)
            self._search_index = vectors.to_gpu(self.index)
        scores, ids = _search(self._search_index, queries, min(k, self.index.ntotal))
        items = self._items.get(int(i) for i in ids.ravel() if i >= 0)
        return [
            [Hit(items[i], float(s)) for s, i in zip(row_scores, row_ids.tolist()) if i in items and items[i].paths]
            for row_scores, row_ids in zip(scores, ids)
        ]

    # ------------------------------------------------------------------------- what callers ask of it

    @property
    def searchable(self) -> int:
        """Vectors in the FAISS file (the store may hold more until the next sync)."""
        return int(self.index.ntotal)

    def roots(self) -> list[str]:
        """The folders indexed so far."""
        return self.store.roots()

    def add_roots(self, roots: Iterable[str]) -> None:
        self.store.add_roots(roots)

    def file_state(self, path: str) -> tuple[int, int] | None:
        """(size, mtime_ns) of a file when it was last indexed or skipped, or None."""
        return self.store.file_state(path)

    def item_for_hash(self, content_hash: str) -> int | None:
        """The id of the image with this content, when it is indexed already."""
        return self.store.item_for_hash(content_hash)

    def write_batch(self, new_items=(), relinked=(), skipped=()) -> list[int]:
        """Commits a batch in one transaction: new images, copies of indexed ones, skipped files (see
        :meth:`mmodal.indexes.metadata.MetadataStore.write_batch`); the FAISS file catches up on :meth:`sync`."""
        return self.store.write_batch(new_items, relinked, skipped)

    def paths_under(self, root: str) -> list[str]:
        return list(self.store.paths_under(root))

    def remove_paths(self, paths: Iterable[str]) -> int:
        return self.store.remove_paths(paths)

    def skipped(self) -> list[tuple[str, str]]:
        """Every file skipped and why, as (path, reason)."""
        return self.store.skipped()

    def vectors_for(self, ids: Sequence[int]) -> dict[int, np.ndarray]:
        """The stored vectors of the given images, by id (ids not in the index are left out)."""
        found = {}
        for part_ids, part_vectors in self.store.vectors([int(i) for i in ids]):
            found.update(zip(part_ids.tolist(), part_vectors))
        return found

    def path_of(self, item_id: int) -> str | None:
        """The first path of an indexed image, or None when no image has that id."""
        item = self._items.get([item_id]).get(item_id)
        return item.paths[0] if item is not None and item.paths else None

    def slots_for(self, ids: Sequence[int]) -> dict[int, np.ndarray]:
        """Object slots of the given items, float32 (n_slots, slot_dim) each, to re-rank hits without reading
        images; an item stored without slots has shape (0, slot_dim) and ids not in the index are left out."""
        return self._slots.get(int(i) for i in ids)

    def near_duplicates(self, threshold: float, neighbours: int = 10) -> list[list[ItemInfo]]:
        """Groups of images whose embeddings are at least ``threshold`` cosine-similar (connected pairs)."""
        return group_near_duplicates(self.search, self.store.vectors(), threshold, neighbours)

    def count(self) -> int:
        """Distinct images stored (copies of one picture count once)."""
        return self.store.count()

    def stats(self) -> dict:
        index_file = self.folder / INDEX_FILE
        size = sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())
        return {
            "folder": str(self.folder),
            "images": self.store.count(),
            "files": self.store.file_count(),
            "searchable": int(self.index.ntotal),
            "skipped": len(self.store.skipped()),
            "model": self.manifest.model.name,
            "model_weights": self.manifest.model.weights_hash[:12],
            "dim": self.manifest.model.dim,
            "index_type": self.manifest.factory,
            "bytes_on_disk": size,
            "index_file_bytes": index_file.stat().st_size if index_file.exists() else 0,
            "roots": self.store.roots(),
        }


FEW_QUERIES = 8


def _search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A few queries run on one thread: OpenMP's fork-join costs more than it saves for them, and far more
    when other work (the model) holds the cores. Batches keep every thread."""
    if len(queries) >= FEW_QUERIES:
        return index.search(queries, k)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return index.search(queries, k)
    finally:
        faiss.omp_set_num_threads(threads)
