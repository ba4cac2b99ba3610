"""What indexing, search, the CLI and the web app ask of an index: one folder or a sharded one alike
(``tests/test_protocols.py`` checks that each implementation conforms)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from mmodal.indexes.manifest import Manifest
from mmodal.indexes.metadata import ItemInfo


@runtime_checkable
class Index(Protocol):
    folder: Path

    @property
    def manifest(self) -> Manifest:
        """The model whose vectors the index holds, and the FAISS structure it keeps them in."""

    # searching and inspecting

    def search(self, queries: np.ndarray, k: int) -> list:
        """Top-``k`` hits (:class:`mmodal.indexes.hits.Hit`) for each query vector (Q, D), best first."""

    def slots_for(self, ids: Sequence[int]) -> dict[int, np.ndarray]:
        """Object slots of the given images, by id, to re-rank hits without reading images."""

    def vectors_for(self, ids: Sequence[int]) -> dict[int, np.ndarray]:
        """Stored embeddings of the given images, by id."""

    def path_of(self, item_id: int) -> str | None:
        """The first path of an image, or None when no image has that id."""

    def count(self) -> int:
        """Distinct images stored."""

    @property
    def searchable(self) -> int:
        """Vectors the FAISS structure holds (the store may hold more until the next sync)."""

    def roots(self) -> list[str]:
        """The folders indexed so far."""

    def skipped(self) -> list[tuple[str, str]]:
        """Every file skipped and why, as (path, reason)."""

    def near_duplicates(self, threshold: float, neighbours: int = 10) -> list[list[ItemInfo]]:
        """Groups of images whose embeddings are at least ``threshold`` cosine-similar."""

    def stats(self) -> dict:
        """What `mmodal info` prints: counts, model, structure, size on disk, roots."""

    # adding to it (opened with mode "w")

    def add_roots(self, roots: Iterable[str]) -> None: ...

    def file_state(self, path: str) -> tuple[int, int] | None:
        """(size, mtime_ns) of a file when it was last indexed or skipped, or None."""

    def item_for_hash(self, content_hash: str) -> int | None:
        """The id of the image with this content, when it is indexed already."""

    def write_batch(self, new_items=(), relinked=(), skipped=()) -> list[int]:
        """Commits new images, copies of indexed ones and skipped files; returns the new images' ids."""

    def paths_under(self, root: str) -> list[str]: ...

    def remove_paths(self, paths: Iterable[str]) -> int: ...

    def sync(self) -> tuple[int, int]:
        """Brings the FAISS structure level with the store; returns (vectors added, vectors removed)."""

    def close(self) -> None: ...

    def __enter__(self) -> Index: ...

    def __exit__(self, *exc) -> None: ...
