"""Batches answer as requests one at a time do: searches whose texts share one pass of the language core, and
questions that share one pass of the detector and the core, in the library and in the model's worker processes."""

from __future__ import annotations

import threading

import pytest

from mmodal.app.model_pool import AskRequest, ModelPool, answer_requests
from mmodal.search import Query

# A server or the model's worker processes, end to end.
pytestmark = pytest.mark.slow


def _same(one, other) -> None:
    assert [r.path for r in one.results] == [r.path for r in other.results]
    assert [r.score for r in one.results] == pytest.approx([r.score for r in other.results], abs=1e-4)
    assert (one.offset, one.unknown_words, one.messages) == (other.offset, other.unknown_words, other.messages)


def test_searches_in_one_batch_rank_as_they_do_one_at_a_time(served, dataset):
    collection, _, _ = served
    searcher = collection.searcher()
    queries = [Query(text=q.text) for q in dataset.queries[:6]]
    queries += [
        Query(text="a circle", negative=("a red circle",)),
        Query(text="show me a zorbly blue square"),  # a word it does not know
        Query(text="zorbly blarf"),  # only such words: nothing to search for
        Query(image=str(dataset.root / dataset.images[0].file)),
    ]
    for offset in (0, 4):
        batched = searcher.report_many(queries, k=5, offset=offset)
        for query, report in zip(queries, batched):
            _same(report, searcher.report(query, k=5, offset=offset))
    assert batched[-2].results == [] and batched[-3].unknown_words == ("zorbly",)


def test_questions_in_one_batch_get_the_answers_they_get_alone(model, dataset):
    files = {r.id: str(dataset.root / r.file) for r in dataset.images}
    requests = [AskRequest(files[q.image_id], "x.png", q.question, 2) for q in dataset.questions[:8]]
    together = answer_requests(model, requests)
    for request, (answer, answer_map) in zip(requests, together):
        alone, _ = answer_requests(model, [request])[0]
        assert (answer.answer, answer.alternatives[0][0]) == (alone.answer, alone.alternatives[0][0])
        assert answer.confidence == pytest.approx(alone.confidence, abs=1e-4)
        assert answer_map.size[0] > 0


def test_the_pool_answers_many_callers_as_the_library_does_and_refuses_what_it_cannot_read(served, dataset, tmp_path):
    collection, _, _ = served
    searcher = collection.searcher()
    pool = ModelPool(collection.index_dir, "shapes", workers=1)
    try:
        pool.warm_up()
        queries = [Query(text=q.text) for q in dataset.queries[:12]]
        replies: dict[int, object] = {}

        def ask_pool(i: int) -> None:
            replies[i] = pool.search(queries[i], 5, True)

        callers = [threading.Thread(target=ask_pool, args=(i,)) for i in range(len(queries))]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(120)
        for i, query in enumerate(queries):
            _same(replies[i], searcher.report(query, k=5))
        batches = pool.timings()["search"]
        assert batches["requests"] == len(queries) and batches["per_batch"] > 1  # those waiting went together

        broken = tmp_path / "broken.png"
        broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
        with pytest.raises(ValueError, match="cannot use broken.png as an image"):
            pool.ask(str(broken), "broken.png", "how many stars are there?", 1)
    finally:
        pool.close()
