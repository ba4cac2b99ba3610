"""The collection the web app serves: a model and its index, searched by many requests at once while one
indexing run at a time adds folders (the index is reopened after each run)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from mmodal.indexes.errors import IndexBusyError
from mmodal.indexes.folders import open_index, recorded_model, remodel_empty
from mmodal.loading import index_model_name, load_model
from mmodal.pipeline import IndexSummary, index_collection
from mmodal.retrieval import Model
from mmodal.search import Query, Searcher, SearchResult


class Collection:
    """The model and the index the app serves; the index is reopened after each indexing run."""

    def __init__(self, index_dir: str | os.PathLike, model: Model):
        self.index_dir = Path(index_dir).resolve()
        self.model = model
        self._searcher: Searcher | None = None
        self._swap = threading.Lock()
        self._indexing = threading.Lock()
        if recorded_model(self.index_dir) is None:
            # An empty index, so the app starts and folders can be added from the Index tab.
            open_index(self.index_dir, "w", model.identity, model_source=model.source or "").close()

    @classmethod
    def open(cls, index_dir: str | os.PathLike, model_name: str | None = None) -> Collection:
        """The index's own model unless one is named."""
        return cls(index_dir, load_model(model_name or index_model_name(index_dir)))

    def use_model(self, name: str) -> None:
        """Another model for an index that holds no image yet (the Index tab's model choice)."""
        if name == self.model.source:
            return
        if not self._indexing.acquire(blocking=False):
            raise IndexBusyError("the index is being updated; wait for that run to finish")
        try:
            model = load_model(name)
            remodel_empty(self.index_dir, model.identity, model_source=model.source or "")
            with self._swap:
                self.model, self._searcher = model, None
        finally:
            self._indexing.release()

    def searcher(self) -> Searcher:
        with self._swap:
            if self._searcher is None:
                self._searcher = Searcher(self.model, open_index(self.index_dir))
            return self._searcher

    def path_of(self, item_id: int) -> str | None:
        return self.searcher().index.path_of(item_id)

    def roots(self) -> list[str]:
        return self.searcher().index.roots()

    def stats(self) -> dict:
        return self.searcher().index.stats()

    def search(self, query: Query, k: int, rerank: bool) -> list[SearchResult]:
        return self.searcher().search(query, k=k, rerank=rerank)

    def listen(self, query: Query):
        return self.searcher().listen(query)

    def add(self, folder: str) -> IndexSummary:
        path = Path(folder).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"no folder or file at {folder} on the server")
        if not self._indexing.acquire(blocking=False):
            raise IndexBusyError("the index is being updated; wait for that run to finish")
        try:
            summary = index_collection(self.model, [path], self.index_dir, workers=min(2, os.cpu_count() or 1))
        finally:
            self._indexing.release()
            with self._swap:
                # The next search opens the index afresh; a search still running keeps the old one until it
                # ends (its SQLite connection closes when the last reference goes).
                self._searcher = None
        return summary
