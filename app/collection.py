"""The collection the web app serves: a model and its index, searched by many requests at once while one
indexing run at a time adds folders (the index is reopened after each run). Searches and questions go to the
model's worker processes once they are started (:meth:`Collection.start_workers`), else run in this one."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from mmodal.app.model_pool import AskRequest, ModelPool, answer_requests
from mmodal.indexes.errors import IndexBusyError
from mmodal.indexes.folders import open_index, recorded_model, remodel_empty
from mmodal.loading import index_model_name, load_model
from mmodal.pipeline import IndexSummary, index_collection
from mmodal.retrieval import Model
from mmodal.search import Query, Searcher, SearchReport

log = logging.getLogger(__name__)

BUSY = "the index is being updated; wait for that run to finish"


class Collection:
    """The model and the index the app serves; the index is reopened after each indexing run."""

    def __init__(self, index_dir: str | os.PathLike, model: Model):
        self.index_dir = Path(index_dir).resolve()
        self.model = model
        self._searcher: Searcher | None = None
        self._swap = threading.Lock()
        self._indexing = threading.Lock()
        self._pool: ModelPool | None = None
        self._answering = threading.Lock()
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
            raise IndexBusyError(BUSY)
        try:
            model = load_model(name)
            remodel_empty(self.index_dir, model.identity, model_source=model.source or "")
            with self._swap:
                self.model, self._searcher = model, None
            if self._pool is not None:
                self._pool.reload(model.source)
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

    def start_workers(self, workers: int) -> None:
        """Answers searches and questions in ``workers`` processes from now on (a model that cannot be loaded
        again by name, as one built in memory, keeps answering in this process)."""
        if workers < 1 or self._pool is not None:
            return
        if not self.model.source:
            log.warning("this model has no name or folder to load it from; it answers in the web process")
            return
        pool = ModelPool(self.index_dir, self.model.source, workers)
        try:
            pool.warm_up()
        except BaseException:
            pool.close()
            raise
        self._pool = pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def report(self, query: Query, k: int, rerank: bool, offset: int = 0) -> SearchReport:
        if self._pool is not None:
            return self._pool.search(query, k, rerank, offset)
        return self.searcher().report(query, k=k, rerank=rerank, offset=offset)

    def ask(self, image: str, shown_as: str, question: str, alternatives: int):
        """(answer, answer map) for ``question`` about the picture at ``image`` (named ``shown_as`` in messages)."""
        if self._pool is not None:
            return self._pool.ask(image, shown_as, question, alternatives)
        with self._answering:  # the answer map is read back from the fusion layer the answer ran through
            return answer_requests(self.model, [AskRequest(image, shown_as, question, alternatives)])[0]

    def timings(self) -> dict[str, dict[str, float]]:
        """Where the workers' requests spent their time (:meth:`ModelPool.timings`); empty without workers."""
        return {} if self._pool is None else self._pool.timings()

    @property
    def workers(self) -> int:
        """Processes answering searches and questions (0: this one)."""
        return 0 if self._pool is None else self._pool.workers

    def check_folder(self, folder: str) -> Path:
        """The folder to add, once it is one the app may index and serve: refuses files, the index's own folder
        and a second run while one goes on, each with a reason."""
        path = Path(folder).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"no folder at {folder} on the server")
        if not path.is_dir():
            raise NotADirectoryError(f"{folder} is a file: add the folder that holds it")
        resolved = path.resolve()
        if resolved == self.index_dir or self.index_dir in resolved.parents:
            raise ValueError(f"{folder} is this index's own folder: add a folder of pictures instead")
        if self._indexing.locked():
            raise IndexBusyError(BUSY)
        return path

    def add(self, folder: str) -> IndexSummary:
        path = self.check_folder(folder)
        if not self._indexing.acquire(blocking=False):
            raise IndexBusyError(BUSY)
        try:
            summary = index_collection(self.model, [path], self.index_dir, workers=min(2, os.cpu_count() or 1))
        finally:
            self._indexing.release()
            with self._swap:
                # The next search opens the index afresh; a search still running keeps the old one until it
                # ends (its SQLite connection closes when the last reference goes).
                self._searcher = None
            if self._pool is not None:
                self._pool.reload()
        return summary
