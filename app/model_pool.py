"""The model's work in worker processes, so that the web process only routes.

One Python process serving the page, the REST API and the model is bound by its interpreter lock: under load
it used 0.85 of 2 cores. Here each worker process loads the model and opens the index once, and answers one
batch at a time. A dispatcher thread per worker takes what waits in the queue: text searches waiting together
(same page size and options) go as one batch, so their texts share one pass of the language core, and so do
questions asking for as many other answers; searches by picture or voice go alone. A thread waiting on a
worker holds no lock, so the web process stays free to route.

After an indexing run or a change of model, :meth:`ModelPool.reload` bumps a generation number that every
request carries; a worker reopens the index (and reloads the model, if it changed) when it sees a new one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict, deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import ClassVar

from mmodal.workers import clean_context, exit_with

log = logging.getLogger(__name__)

WORKER_NICENESS = 5
MAX_WAITING = 256  # requests waiting beyond this are refused (busy), not queued without bound
# What a worker imports before it is forked from the fork server: the model's libraries, once for all workers.
PRELOAD = ["torch", "mmodal.search", "mmodal.loading", "mmodal.explain"]


class RequestRefused(ValueError):
    """The model refused a request (bad input); the message says why, in words for people."""


class PoolBusy(RuntimeError):
    """Too many requests wait for the model; the client should try again in a moment."""


class WorkerFailed(RuntimeError):
    """A worker failed on a request for a reason that is not the request's fault (see the server's log)."""


@dataclass(frozen=True)
class Served:
    """What a worker needs to open the collection: the index, the model that reads it, and their generation."""

    index_dir: str
    model: str
    generation: int


@dataclass(frozen=True)
class SearchRequest:
    query: object  # mmodal.search.Query
    k: int
    rerank: bool
    offset: int = 0
    batch_limit: ClassVar[int] = 32  # text searches answered in one pass

    def batch_key(self) -> tuple | None:
        """Requests with the same key may share a batch; None for those that go alone (pictures, clips)."""
        if not self.query.text_only:
            return None
        return ("search", self.k, self.rerank, self.offset)


@dataclass(frozen=True)
class AskRequest:
    image: str  # path of the picture
    shown_as: str  # its name as the user knows it
    question: str
    alternatives: int
    batch_limit: ClassVar[int] = 8  # a question costs several searches: a long batch would hold its first ones

    def batch_key(self) -> tuple:
        """Questions asking for as many other answers share a batch: one pass of the detector and the core."""
        return ("ask", self.alternatives)


# ------------------------------------------------------------------------------------------- worker side

_opened: tuple[int, str, object] | None = None  # (generation, model name, Searcher)


def _start_worker(owner_pid: int, threads: int) -> None:
    exit_with(owner_pid)
    # Under load the web process's routing comes first: it is short, and while a worker waits for the cores,
    # requests gather in the queue and go to the model in larger batches.
    os.nice(WORKER_NICENESS)
    import torch

    torch.set_num_threads(threads)  # one core each: the model's operations are too small to gain from more


def _searcher(served: Served):
    global _opened
    from mmodal.indexes.folders import open_index
    from mmodal.loading import load_model
    from mmodal.search import Searcher

    if _opened is None or _opened[0] != served.generation:
        model = _opened[2].model if _opened is not None and _opened[1] == served.model else load_model(served.model)
        if _opened is not None:
            _opened[2].index.close()
        _opened = (served.generation, served.model, Searcher(model, open_index(served.index_dir)))
    return _opened[2]


def _outcome(run, *args) -> tuple[str, object]:
    from mmodal.indexes.errors import IndexProblem

    try:
        return "ok", run(*args)
    except (ValueError, OSError, IndexProblem) as refused:
        return "refused", str(refused)
    except Exception as error:  # logged here, where the traceback is; the web process says the server failed
        log.exception("a worker failed on a request")
        return "failed", f"{type(error).__name__}: {error}"


def answer_requests(model, requests: list[AskRequest]) -> list:
    """(answer, answer map) of ``model`` for each request, all with the same ``alternatives``, in one pass."""
    from mmodal.data.images import ImageSkipped, read_image
    from mmodal.explain import answer_picture

    pictures = []
    for request in requests:
        try:
            pictures.append(read_image(request.image).image)
        except ImageSkipped as skipped:
            raise ValueError(f"cannot use {request.shown_as} as an image: {skipped.reason}") from None
    questions = [r.question for r in requests]
    answers = model.ask(pictures, questions, alternatives=requests[0].alternatives)
    return [(answer, answer_picture(picture, answer)) for picture, answer in zip(pictures, answers)]


def _work(served: Served, requests: list) -> tuple[list[tuple[str, object]], float]:
    """Runs in a worker: one outcome per request, ("ok", reply), ("refused", message) or ("failed", message), and
    the seconds the worker spent on them."""
    started = time.perf_counter()
    return _outcomes(served, requests), time.perf_counter() - started


def _outcomes(served: Served, requests: list) -> list[tuple[str, object]]:
    opened = _outcome(_searcher, served)
    if opened[0] != "ok":
        return [opened] * len(requests)
    searcher = opened[1]
    if isinstance(requests[0], AskRequest):

        def run(batch):
            return answer_requests(searcher.model, batch)
    else:

        def run(batch):
            first = batch[0]
            return searcher.report_many([r.query for r in batch], first.k, first.rerank, first.offset)

    if len(requests) > 1:
        together = _outcome(run, requests)
        if together[0] == "ok":
            return [("ok", reply) for reply in together[1]]
    # One at a time, so that each request gets its own answer or its own refusal.
    return [_one(_outcome(run, [request])) for request in requests]


def _one(outcome: tuple[str, object]) -> tuple[str, object]:
    """The outcome of a batch of one, as the outcome of its request."""
    status, value = outcome
    return (status, value[0]) if status == "ok" else outcome


# ------------------------------------------------------------------------------------------- web side


class ModelPool:
    """``workers`` processes answering searches and questions about the collection in ``index_dir``."""

    def __init__(self, index_dir: str | os.PathLike, model: str, workers: int, threads_per_worker: int = 1):
        if workers < 1:
            raise ValueError(f"a pool needs at least one worker, got {workers}")
        self.workers = workers
        self._threads = threads_per_worker
        self._served = Served(str(index_dir), model, 0)
        self._pending: deque[tuple[object, Future, float]] = deque()  # request, its reply, when it came
        self._spent: dict[str, defaultdict[str, float]] = defaultdict(lambda: defaultdict(float))
        self._ready = threading.Condition()
        self._closed = False
        self._executor = self._new_executor()
        self._dispatchers = [
            threading.Thread(target=self._dispatch, name=f"model-pool-{i}", daemon=True) for i in range(workers)
        ]
        for thread in self._dispatchers:
            thread.start()

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self.workers,
            mp_context=clean_context(PRELOAD),
            initializer=_start_worker,
            initargs=(os.getpid(), self._threads),
        )

    def warm_up(self) -> None:
        """Starts every worker and opens the collection in it, so that the first requests wait for no loading."""
        futures = [self._executor.submit(_searcher_ready, self._served) for _ in range(self.workers)]
        for future in futures:
            status, message = future.result()
            if status != "ok":
                raise WorkerFailed(f"a worker could not open the collection: {message}")

    def search(self, query, k: int, rerank: bool, offset: int = 0):
        """The :class:`mmodal.search.SearchReport` of ``query``."""
        return self._call(SearchRequest(query, k, rerank, offset))

    def ask(self, image: str, shown_as: str, question: str, alternatives: int):
        """(answer, answer map) for a question about the picture at ``image``."""
        return self._call(AskRequest(image, shown_as, question, alternatives))

    def reload(self, model: str | None = None) -> None:
        """Workers reopen the index (and load ``model``, if given) before their next request."""
        with self._ready:
            served = self._served
            self._served = Served(served.index_dir, model or served.model, served.generation + 1)

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()
            while self._pending:
                self._pending.popleft()[1].set_exception(WorkerFailed("the server is stopping"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _call(self, request):
        done: Future = Future()
        with self._ready:
            if self._closed:
                raise WorkerFailed("the server is stopping")
            if len(self._pending) >= MAX_WAITING:
                raise PoolBusy(f"the server is busy ({len(self._pending)} requests wait); try again in a moment")
            self._pending.append((request, done, time.perf_counter()))
            self._ready.notify()
        status, value = done.result()
        if status == "refused":
            raise RequestRefused(value)
        if status == "failed":
            raise WorkerFailed(f"the server failed on this request ({value}); its log says more")
        return value

    def timings(self) -> dict[str, dict[str, float]]:
        """Where a request's time went, by kind ("search", "ask"), averaged since the start: milliseconds waiting
        in the queue, on the model in a worker, and on the way to and from it; and requests per batch."""
        with self._ready:
            spent = {kind: dict(sums) for kind, sums in self._spent.items()}
        return {
            kind: {
                "requests": int(sums["requests"]),
                "per_batch": round(sums["requests"] / sums["batches"], 2),
                "queue_ms": round(1000 * sums["queue"] / sums["requests"], 1),
                "model_ms": round(1000 * sums["model"] / sums["batches"], 1),
                "transfer_ms": round(1000 * sums["transfer"] / sums["batches"], 1),
            }
            for kind, sums in sorted(spent.items())
        }

    def _take(self) -> tuple[Served, list[tuple[object, Future, float]]] | None:
        """The next batch: the oldest request, and the waiting requests that may share its batch."""
        with self._ready:
            while not self._pending and not self._closed:
                self._ready.wait()
            if self._closed:
                return None
            first = self._pending.popleft()
            batch, key = [first], first[0].batch_key()
            if key is not None:
                kept: deque = deque()
                while self._pending and len(batch) < first[0].batch_limit:
                    item = self._pending.popleft()
                    (batch if item[0].batch_key() == key else kept).append(item)
                kept.extend(self._pending)
                self._pending = kept
            return self._served, batch

    def _dispatch(self) -> None:
        while (taken := self._take()) is not None:
            served, batch = taken
            sent, model_seconds = time.perf_counter(), 0.0
            try:
                outcomes, model_seconds = self._executor.submit(_work, served, [r for r, _, _ in batch]).result()
            except BrokenProcessPool:  # a worker died (killed, out of memory): start afresh for what follows
                log.error("a model worker died; starting new workers")
                with self._ready:
                    if not self._closed:
                        self._executor = self._new_executor()
                outcomes = [("failed", "a model worker died")] * len(batch)
            except Exception as error:  # the executor is shutting down
                outcomes = [("failed", f"{type(error).__name__}: {error}")] * len(batch)
            self._count(batch, sent, model_seconds)
            for (_, done, _), outcome in zip(batch, outcomes):
                done.set_result(outcome)

    def _count(self, batch: list[tuple[object, Future, float]], sent: float, model_seconds: float) -> None:
        answered = time.perf_counter()
        with self._ready:
            sums = self._spent["ask" if isinstance(batch[0][0], AskRequest) else "search"]
            sums["requests"] += len(batch)
            sums["batches"] += 1
            sums["queue"] += sum(sent - came for _, _, came in batch)
            sums["model"] += model_seconds
            sums["transfer"] += answered - sent - model_seconds


def _searcher_ready(served: Served) -> tuple[str, object]:
    status, value = _outcome(_searcher, served)
    return status, None if status == "ok" else value
