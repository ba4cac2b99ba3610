"""What a search returns (:class:`Hit`) and what every index layout builds on its search: the cache of rows that
searches share, and groups of near-duplicate images."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from mmodal.indexes.metadata import ItemInfo


@dataclass(frozen=True)
class Hit:
    item: ItemInfo
    score: float

    @property
    def path(self) -> str:
        return self.item.paths[0]


class RowCache:
    """Rows by id, fetched in one call for those not held yet; the least recently used go beyond ``capacity``.
    Safe to share between threads that search at once."""

    def __init__(self, fetch: Callable[[list[int]], dict], capacity: int):
        self._fetch = fetch
        self._capacity = capacity
        self._rows: OrderedDict[int, object] = OrderedDict()
        self._guard = threading.Lock()

    def get(self, ids: Iterable[int]) -> dict:
        ids = list(dict.fromkeys(ids))
        with self._guard:
            found = {}
            for i in ids:
                if i in self._rows:
                    self._rows.move_to_end(i)
                    found[i] = self._rows[i]
        missing = [i for i in ids if i not in found]
        if missing:
            fetched = self._fetch(missing)
            found.update(fetched)
            with self._guard:
                self._rows.update(fetched)
                while len(self._rows) > self._capacity:
                    self._rows.popitem(last=False)
        return found

    def clear(self) -> None:
        with self._guard:
            self._rows.clear()


def group_near_duplicates(
    search: Callable[[np.ndarray, int], list[list[Hit]]],
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    threshold: float,
    neighbours: int,
) -> list[list[ItemInfo]]:
    """Connected groups of images at least ``threshold`` cosine-similar: every image's ``neighbours`` nearest,
    found by the index's own ``search``, for ``batches`` of (ids, vectors) that cover the index."""
    parent: dict[int, int] = {}
    infos: dict[int, ItemInfo] = {}

    def root(i: int) -> int:
        while parent.get(i, i) != i:
            i = parent[i]
        return i

    for ids, vecs in batches:
        for a, hits in zip(ids.tolist(), search(vecs, neighbours + 1)):
            for hit in hits:
                infos[hit.item.id] = hit.item
                if hit.item.id != a and hit.score >= threshold:
                    ra, rb = root(a), root(hit.item.id)
                    if ra != rb:
                        parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, set[int]] = {}
    for i in parent:
        groups.setdefault(root(i), {root(i)}).add(i)
    return [sorted((infos[i] for i in members if i in infos), key=lambda x: x.id) for members in groups.values()]
