"""Sharded collections: one index per shard, each image in the shard its content hash picks, searched together.

A shard is a whole index folder (metadata store, FAISS file, manifest), so shards are built apart and can be
copied to other disks or machines. A search asks every shard for its top k at once and merges them by score:
with exact (Flat) shards that is exactly the top k of one index over all the images.

A shard's item id ``i`` is known outside as ``i * n_shards + shard``, so ids stay unique across shards and
lead back to their shard.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from mmodal.indexes.atomic import write_json
from mmodal.indexes.collection import SHARDS_FILE, ImageIndex
from mmodal.indexes.errors import IndexNotFoundError, ModelMismatchError
from mmodal.indexes.hits import Hit, group_near_duplicates
from mmodal.indexes.manifest import Manifest, ModelIdentity
from mmodal.indexes.metadata import ItemInfo, NewItem


def shard_of(content_hash: str, n_shards: int) -> int:
    """The shard an image belongs to, from its content hash: spread evenly, and the same on every machine."""
    digest = hashlib.blake2b(content_hash.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n_shards


def is_sharded(folder: str | os.PathLike) -> bool:
    return (Path(folder) / SHARDS_FILE).is_file()


def recorded_shards(folder: str | os.PathLike) -> int | None:
    """How many shards the index in ``folder`` has; None when it is not sharded."""
    return _read_layout(Path(folder))["n_shards"] if is_sharded(folder) else None


def shard_folder(folder: Path, shard: int) -> Path:
    return folder / f"shard-{shard:03d}"


class ShardedIndex:
    """Several :class:`ImageIndex` shards behind the calls that search and re-ranking make of one index."""

    def __init__(self, folder: Path, shards: list[ImageIndex]):
        self.folder = folder
        self.shards = shards
        self._pool = ThreadPoolExecutor(max_workers=min(len(shards), 16), thread_name_prefix="shard")

    # ------------------------------------------------------------------------------------------ opening

    @classmethod
    def open_for_writing(
        cls,
        folder: str | os.PathLike,
        model: ModelIdentity,
        n_shards: int,
        factory: str | None = None,
        model_source: str = "",
    ) -> ShardedIndex:
        """Opens (creating when absent) a sharded index to add to it; every shard is locked for writing."""
        folder = Path(folder)
        if n_shards < 1:
            raise ValueError(f"a sharded index needs at least one shard, got {n_shards}")
        if is_sharded(folder):
            recorded = _read_layout(folder)
            if recorded["n_shards"] != n_shards:
                raise ValueError(
                    f"{folder} holds {recorded['n_shards']} shards, not {n_shards}; images go to the shard their "
                    "content hash picks, so the number of shards is fixed when the index is made"
                )
        elif folder.exists() and any(folder.iterdir()):
            raise FileExistsError(f"{folder} is not empty and holds no sharded index; choose a new folder")
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / SHARDS_FILE, {"n_shards": n_shards, "model": asdict(model)})
        shards: list[ImageIndex] = []
        try:
            for shard in range(n_shards):
                shards.append(ImageIndex.open_for_writing(shard_folder(folder, shard), model, factory, model_source))
        except BaseException:
            for opened in shards:
                opened.close()
            raise
        return cls(folder, shards)

    @classmethod
    def open(cls, folder: str | os.PathLike, model: ModelIdentity | None = None) -> ShardedIndex:
        """Opens a sharded index to search it; each shard checks its model and its FAISS file."""
        folder = Path(folder)
        if not is_sharded(folder):
            raise IndexNotFoundError(f"no sharded mmodal index in {folder} (it has no {SHARDS_FILE})")
        n_shards = _read_layout(folder)["n_shards"]
        shards = [ImageIndex.open(shard_folder(folder, shard), model) for shard in range(n_shards)]
        models = {json.dumps(asdict(s.manifest.model), sort_keys=True) for s in shards}
        if len(models) != 1:
            for shard in shards:
                shard.close()
            raise ModelMismatchError(f"the shards of {folder} were embedded by different models: {sorted(models)}")
        return cls(folder, shards)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for shard in self.shards:
            shard.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ----------------------------------------------------------------------------------------- writing

    def write_batch(self, new_items: Sequence[NewItem] = (), relinked=(), skipped=()) -> list[int]:
        """Stores new images, each in its shard, copies of held ones beside them and skipped files in the shard
        their path picks (see :meth:`ImageIndex.write_batch`); returns the outside ids of the images added, in
        the order of ``new_items``."""
        n = len(self.shards)
        parts: dict[int, tuple[list, list, list]] = {s: ([], [], []) for s in range(n)}
        order: dict[int, list[int]] = {s: [] for s in range(n)}
        for position, item in enumerate(new_items):
            shard = shard_of(item.content_hash, n)
            parts[shard][0].append(item)
            order[shard].append(position)
        for path, item_id, size, mtime_ns in relinked:
            parts[int(item_id) % n][1].append((path, int(item_id) // n, size, mtime_ns))
        for entry in skipped:
            parts[shard_of(entry[0], n)][2].append(entry)
        ids = [0] * len(new_items)
        for shard, (items, links, skips) in parts.items():
            if items or links or skips:
                added = self.shards[shard].write_batch(items, links, skips)
                for position, item_id in zip(order[shard], added):
                    ids[position] = self._outside(shard, item_id)
        return ids

    def item_for_hash(self, content_hash: str) -> int | None:
        shard = shard_of(content_hash, len(self.shards))
        found = self.shards[shard].item_for_hash(content_hash)
        return None if found is None else self._outside(shard, found)

    def file_state(self, path: str) -> tuple[int, int] | None:
        """(size, mtime_ns) of a file when it was last indexed or skipped (in whichever shard holds it)."""
        return next((state for shard in self.shards if (state := shard.file_state(path)) is not None), None)

    def roots(self) -> list[str]:
        return self.shards[0].roots()

    def add_roots(self, roots: Iterable[str]) -> None:
        self.shards[0].add_roots(roots)

    def paths_under(self, root: str) -> list[str]:
        return [p for shard in self.shards for p in shard.paths_under(root)]

    def remove_paths(self, paths: Iterable[str]) -> int:
        paths = list(paths)
        return sum(shard.remove_paths(paths) for shard in self.shards)

    def skipped(self) -> list[tuple[str, str]]:
        return sorted(entry for shard in self.shards for entry in shard.skipped())

    def sync(self) -> tuple[int, int]:
        """Brings every shard's FAISS file level with its store; returns (added, removed) over all shards."""
        totals = [shard.sync() for shard in self.shards]
        return sum(t[0] for t in totals), sum(t[1] for t in totals)

    # ---------------------------------------------------------------------------------------- searching

    @property
    def manifest(self) -> Manifest:
        """The first shard's manifest: every shard holds the same model's vectors."""
        return self.shards[0].manifest

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """Top-``k`` images for each query vector over all shards, best first."""
        per_shard = list(self._pool.map(lambda shard: shard.search(queries, k), self.shards))
        merged = []
        for row in range(len(per_shard[0])):
            candidates = [
                (
                    hit.score,
                    -shard,
                    -hit.item.id,
                    Hit(replace(hit.item, id=self._outside(shard, hit.item.id)), hit.score),
                )
                for shard, hits in enumerate(per_shard)
                for hit in hits[row]
            ]
            merged.append([c[-1] for c in heapq.nlargest(k, candidates, key=lambda c: c[:3])])
        return merged

    def slots_for(self, ids: Sequence[int]) -> dict[int, np.ndarray]:
        return self._routed(ids, ImageIndex.slots_for)

    def vectors_for(self, ids: Sequence[int]) -> dict[int, np.ndarray]:
        return self._routed(ids, ImageIndex.vectors_for)

    def path_of(self, item_id: int) -> str | None:
        n = len(self.shards)
        return self.shards[int(item_id) % n].path_of(int(item_id) // n)

    def near_duplicates(self, threshold: float, neighbours: int = 10) -> list[list[ItemInfo]]:
        """Groups of near-duplicate images over all shards: copies of a picture with different bytes have
        different content hashes, so they may lie in different shards."""
        batches = (
            (np.asarray([self._outside(number, i) for i in ids.tolist()]), vecs)
            for number, shard in enumerate(self.shards)
            for ids, vecs in shard.store.vectors()
        )
        return group_near_duplicates(self.search, batches, threshold, neighbours)

    def count(self) -> int:
        return sum(shard.count() for shard in self.shards)

    def stats(self) -> dict:
        """The shards' figures summed, with each shard's images under "shard_images"."""
        per_shard = [shard.stats() for shard in self.shards]
        summed = ("images", "files", "searchable", "skipped", "bytes_on_disk", "index_file_bytes")
        return {
            **per_shard[0],
            **{key: sum(s[key] for s in per_shard) for key in summed},
            "folder": str(self.folder),
            "shards": len(self.shards),
            "shard_images": [s["images"] for s in per_shard],
        }

    @property
    def searchable(self) -> int:
        return sum(shard.searchable for shard in self.shards)

    # ------------------------------------------------------------------------------------------- ids

    def _outside(self, shard: int, item_id: int) -> int:
        return int(item_id) * len(self.shards) + shard

    def _routed(self, ids: Iterable[int], fetch) -> dict:
        n = len(self.shards)
        by_shard: dict[int, list[int]] = {}
        for i in ids:
            by_shard.setdefault(int(i) % n, []).append(int(i) // n)
        found = {}
        for shard, local in by_shard.items():
            found.update({self._outside(shard, i): v for i, v in fetch(self.shards[shard], local).items()})
        return found


def _read_layout(folder: Path) -> dict:
    try:
        layout = json.loads((folder / SHARDS_FILE).read_text())
        if not isinstance(layout.get("n_shards"), int) or layout["n_shards"] < 1:
            raise ValueError("n_shards")
        return layout
    except (OSError, ValueError) as error:
        raise IndexNotFoundError(
            f"{folder / SHARDS_FILE} is damaged ({error}); the shard folders beside it are whole indexes"
        ) from error
