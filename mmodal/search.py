"""Search an index by text, example image or voice: FAISS candidates (late fusion), re-ranked by the slot reasoner.

A query may combine parts, as in "like this photo, but blue": the embeddings of every positive part are
summed, each negative text is subtracted at half weight, and the result is normalised. When the query
has text, the top candidates are re-scored by the slot reasoner over the object slots stored in the index
(no image is read): the probability that the text holds of the image and none of the negative texts does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from mmodal.data.images import ImageSkipped, read_image
from mmodal.encoders.tokenizer import WORD
from mmodal.encoders.transcribe import Transcript
from mmodal.fusion.reasoner import Decision, Parse
from mmodal.indexes.folders import open_index
from mmodal.indexes.hits import Hit
from mmodal.indexes.protocol import Index
from mmodal.retrieval import Model

log = logging.getLogger(__name__)

# Candidates the reasoner re-scores: the late embedding's recall@K per query kind decides it (BENCHMARKS.md).
RERANK_TOP = 500
# Candidates a model that corrects the cosine of text queries (the photos model's hubness) re-scores.
RESCORE_TOP = 200
NEGATIVE_WEIGHT = 0.5
# A re-ranked search whose best match probability is below this found nothing that fits the text: it says so and
# shows the closest images.
NOTHING_MATCHES = 0.5
# Results a search may page through (offset + count).
MAX_RANK = 1000


class EmptyQueryError(ValueError):
    """A search needs at least one of: text, an image, a voice clip."""


@dataclass(frozen=True)
class Query:
    text: str | None = None
    image: str | None = None  # path of an example image
    audio: tuple[np.ndarray, int] | None = None  # (waveform, sample rate)
    negative: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        """Neither words, an example image nor a voice clip: nothing to search for (negatives only push away)."""
        return self.text is None and self.image is None and self.audio is None

    @property
    def text_only(self) -> bool:
        return self.text is not None and self.image is None and self.audio is None


@dataclass(frozen=True)
class SearchResult:
    id: int  # the image's id in its index, the same for every copy of the picture
    path: str
    score: float  # what the ranking used: the match probability when re-ranked, else the cosine similarity
    embedding_score: float
    rerank_score: float | None
    width: int
    height: int
    other_paths: tuple[str, ...] = ()  # further copies of the same picture
    # The objects the query's phrases matched: part, role ("a" subject, "b" the related object), and the box
    # as fractions of the picture (cx, cy, d: d is the diameter over the width).
    matched: tuple[dict, ...] = ()

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "path": self.path,
            "score": round(self.score, 6),
            "embedding_score": round(self.embedding_score, 6),
            "rerank_score": None if self.rerank_score is None else round(self.rerank_score, 6),
            "width": self.width,
            "height": self.height,
            "other_paths": list(self.other_paths),
            "matched": list(self.matched),
        }


@dataclass(frozen=True)
class SearchReport:
    """A search as people see it: the results and what to tell them about it. The same for the CLI, the page and
    the REST API."""

    query: Query  # as searched: a spoken query heard clearly has its words as its text
    results: list[SearchResult]
    offset: int = 0  # the rank (from 0) of the first result
    transcript: Transcript | None = None
    unknown_words: tuple[str, ...] = ()
    messages: tuple[str, ...] = ()  # why a clip was searched by its sound, words not understood, no match

    @property
    def searched_by(self) -> str | None:
        """For a spoken query: "words" when its transcript was searched, else "sound"."""
        if self.transcript is None:
            return None
        return "sound" if self.query.audio is not None else "words"

    @property
    def message(self) -> str | None:
        return " · ".join(self.messages) or None

    def to_dict(self) -> dict:
        heard = {} if self.transcript is None else {**self.transcript.to_dict(), "searched_by": self.searched_by}
        return {
            **heard,
            "unknown_words": list(self.unknown_words),
            "message": self.message,
            "offset": self.offset,
            "results": [r.to_dict() for r in self.results],
        }


def searchable(model: Model, transcript: Transcript) -> bool:
    """Whether a spoken query is searched by its words: heard clearly, and asking for something the pictures can
    show. A few clear function words ("a", "the") are what speech in other languages often sounds like."""
    return transcript.heard and model.encode_and_read([transcript.text])[1][0].asks_for_something


class Searcher:
    """A model and an index that agree with each other."""

    def __init__(self, model: Model, index: Index):
        index.manifest.check_model(model.identity, index.folder)
        self.model = model
        self.index = index

    @classmethod
    def open(cls, index_dir: str | os.PathLike, model: str | None = None, allow_download: bool = False) -> Searcher:
        """The index in ``index_dir`` (one folder or sharded) with ``model``, by default the one that built it."""
        from mmodal.loading import index_model_name, load_model

        index = open_index(index_dir)
        try:
            return cls(load_model(model or index_model_name(index_dir), allow_download=allow_download), index)
        except BaseException:
            index.close()
            raise

    def listen(self, query: Query) -> tuple[Query, Transcript | None]:
        """A spoken query as its words: when the model transcribes and hears the clip clearly, the query with the
        transcript as its text (and no clip), so it takes the text path with re-ranking; otherwise the query as it
        was, searched by the clip's sound. The transcript, when there is one, comes back either way."""
        if query.audio is None or not self.model.transcribes:
            return query, None
        transcript = self.model.transcribe([query.audio])[0]
        if query.text is None and searchable(self.model, transcript):
            return replace(query, text=transcript.text, audio=None), transcript
        return query, transcript

    @staticmethod
    def doubt(transcript: Transcript | None, query: Query) -> str | None:
        """What to tell the user about a spoken query that was not searched by its words (None when it was)."""
        if transcript is None or query.audio is None:
            return None
        if query.text is not None and query.text != transcript.text:
            return "a typed query was given too: the clip adds its sound to it"
        if not transcript.text:
            return (
                "heard no query words in the clip (is it speech, in English?); searched by its sound instead: "
                "record it again or type the query"
            )
        if transcript.heard:  # clearly, yet it was not searched by its words: they ask for nothing
            return (
                f'heard "{transcript.text}", which names nothing to look for (is it speech, in English?); searched by '
                "its sound instead: say what the pictures show, or type it"
            )
        return (
            f'unsure of what the clip says (heard "{transcript.text}", confidence {transcript.confidence:.0%}); '
            "searched by its sound instead: check the words, or type them"
        )

    def not_understood(self, query: Query) -> tuple[list[str], str | None]:
        """The words of the query's texts that the model does not know, and what to tell the user of them."""
        texts = [t for t in (query.text, *query.negative) if t is not None]
        unknown = list(dict.fromkeys(w for t in texts for w in self.model.unknown_words(t)))
        if not unknown:
            return [], None
        listed = ", ".join(f'"{w}"' for w in unknown[:8]) + (" …" if len(unknown) > 8 else "")
        if self._only_unknown(query):
            return unknown, f"the model knows none of these words: {listed}; nothing to search for. Try other words"
        return unknown, f"the model does not know the words {listed}; the results read the query without them"

    def report(self, query: Query, k: int = 10, rerank: bool = True, offset: int = 0) -> SearchReport:
        """Listens to a spoken query, searches, and says what it did; results ``offset`` to ``offset + k``."""
        return self.report_many([query], k, rerank, offset)[0]

    def report_many(
        self, queries: Sequence[Query], k: int = 10, rerank: bool = True, offset: int = 0
    ) -> list[SearchReport]:
        """:meth:`report` for many queries at once: their texts go through the language core in one pass."""
        if offset < 0:
            raise ValueError(f"the offset must be 0 or more, got {offset}")
        if offset + k > MAX_RANK:
            raise ValueError(f"results go down to rank {MAX_RANK}; asked for ranks {offset + 1} to {offset + k}")
        heard = [self.listen(q) for q in queries]
        searched = self.search_many([q for q, _ in heard], k=offset + k, rerank=rerank)
        reports = []
        for (query, transcript), results in zip(heard, searched):
            unknown, not_understood = self.not_understood(query)
            messages = [self.doubt(transcript, query), not_understood, self._no_match(query, results)]
            reports.append(
                SearchReport(
                    query=query,
                    results=results[offset:],
                    offset=offset,
                    transcript=transcript,
                    unknown_words=tuple(unknown),
                    messages=tuple(m for m in messages if m),
                )
            )
        return reports

    @staticmethod
    def _no_match(query: Query, results: Sequence[SearchResult]) -> str | None:
        if not results or results[0].rerank_score is None or results[0].rerank_score >= NOTHING_MATCHES:
            return None
        return (
            f'nothing matches "{query.text}" (the best match is {results[0].rerank_score:.0%} likely); '
            "the closest images are shown"
        )

    def _only_unknown(self, query: Query) -> bool:
        """A text-only query none of whose words the model knows: it has nothing to search for."""
        if not query.text_only:
            return False
        words = WORD.findall(query.text.lower())
        return bool(words) and len(self.model.unknown_words(query.text)) == len(words)

    def query_vectors(self, queries: Sequence[Query], read: bool = False) -> tuple[np.ndarray, list[list[Parse]]]:
        """The queries' embeddings (Q, D) and, with ``read``, the reasoner's reading of each one's text and negative
        texts. The texts of all queries go through the language core in one pass, which also reads them."""
        texts = [[t for t in (q.text, *q.negative) if t is not None] for q in queries]
        flat = [t for ts in texts for t in ts]
        embedded, read_texts = (
            (self.model.encode_and_read(flat) if read else (self.model.encode_text(flat), [])) if flat else ([], [])
        )
        pictures = [read_query_image(q.image, self.model.input_size) for q in queries if q.image is not None]
        pictured = iter(self.model.encode_image(pictures) if pictures else [])
        clips = [q.audio for q in queries if q.audio is not None]
        heard = iter(self.model.encode_audio(clips) if clips else [])
        vectors, parses, start = [], [], 0
        for query, own in zip(queries, texts):
            embeddings, start = embedded[start : start + len(own)], start + len(own)
            parses.append(read_texts[start - len(own) : start] if read else [])
            positive, negative = (
                (embeddings[:1], embeddings[1:]) if query.text is not None else (embeddings[:0], embeddings)
            )
            parts = list(positive)
            if query.image is not None:
                parts.append(next(pictured))
            if query.audio is not None:
                parts.append(next(heard))
            if not parts:
                raise EmptyQueryError("a search needs words, an example image or a voice clip: give one of them")
            vector = torch.stack(parts).sum(0)
            if query.negative:
                vector = vector - NEGATIVE_WEIGHT * negative.sum(0)
            vectors.append(torch.nn.functional.normalize(vector, dim=0).float().cpu())
        return torch.stack(vectors).numpy(), parses

    def search(
        self, query: Query, k: int = 10, rerank: bool = True, rerank_top: int = RERANK_TOP
    ) -> list[SearchResult]:
        return self.search_many([query], k, rerank, rerank_top)[0]

    def search_many(
        self, queries: Sequence[Query], k: int = 10, rerank: bool = True, rerank_top: int = RERANK_TOP
    ) -> list[list[SearchResult]]:
        """The top ``k`` of each query; the queries share one pass of each tower and one index search."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        # No confident results for words the model cannot read; `not_understood` says why.
        live = [i for i, query in enumerate(queries) if not self._only_unknown(query)]
        found: list[list[SearchResult]] = [[] for _ in queries]
        if not live:
            return found
        reranks = [rerank and queries[i].text is not None and self.model.has_slots for i in live]
        rescores = [
            not reranked and queries[i].text_only and self.model.rescores_text_hits
            for i, reranked in zip(live, reranks)
        ]
        depths = [
            max(k, rerank_top) if reranked else max(k, RESCORE_TOP) if rescored else k
            for reranked, rescored in zip(reranks, rescores)
        ]
        vectors, parses = self.query_vectors([queries[i] for i in live], read=any(reranks))
        hits = self.index.search(vectors, max(depths))
        for row, i in enumerate(live):
            found[i] = self._rank(hits[row][: depths[row]], parses[row], k, reranks[row], rescores[row], rerank_top)
        return found

    def _rank(
        self, hits: list[Hit], parses: list[Parse], k: int, rerank: bool, rescore: bool, rerank_top: int
    ) -> list[SearchResult]:
        if rescore and hits:
            stored = self.index.vectors_for([hit.item.id for hit in hits])
            scores = self.model.rescore_text_hits(
                np.array([hit.score for hit in hits], np.float32), np.stack([stored[hit.item.id] for hit in hits])
            )
            order = np.argsort(-scores, kind="stable")[:k]
            return [_result(hits[i], float(scores[i]), None) for i in order]
        if not rerank or not hits:
            return [_result(hit, hit.score, None) for hit in hits[:k]]
        # The reasoner re-orders the top ``rerank_top``; deeper hits follow in the embedding's order.
        candidates, deeper = hits[:rerank_top], hits[rerank_top:k]
        slots = self._slots(candidates)
        decision = self.model.decide(parses[0], slots)
        probability = decision.probability
        for negative in parses[1:]:
            probability = probability * (1 - self.model.decide(negative, slots).probability)
        probabilities = probability.tolist()
        order = sorted(range(len(candidates)), key=lambda i: (-probabilities[i], -candidates[i].score))[:k]
        position = self.model.slot_boxes(slots)
        reranked = [
            _result(candidates[i], probabilities[i], probabilities[i], _matched(decision, position[i], i))
            for i in order
        ]
        return reranked + [_result(hit, hit.score, None) for hit in deeper]

    def _slots(self, hits: Sequence[Hit]) -> torch.Tensor:
        """The candidates' stored slots, zero-padded: (K, N, slot_dim)."""
        stored = self.index.slots_for([hit.item.id for hit in hits])
        rows = [stored.get(hit.item.id) for hit in hits]
        slots = np.zeros(
            (len(hits), max(1, max(len(r) for r in rows if r is not None)), self.model.slot_dim), np.float32
        )
        for i, r in enumerate(rows):
            if r is not None:
                slots[i, : len(r)] = r
        return torch.from_numpy(slots)


def _matched(decision: Decision, position: torch.Tensor, row: int) -> tuple[dict, ...]:
    """The boxes (cx, cy, d) of the slots that the best assignment gave to each of the query's phrases."""
    return tuple(
        {"part": part, "role": role, **{k: round(float(v), 4) for k, v in zip(("cx", "cy", "d"), position[slot])}}
        for (part, role), slot in zip(decision.roles, decision.assignment[row].tolist())
    )


def _result(hit: Hit, score: float, rerank_score: float | None, matched: tuple[dict, ...] = ()) -> SearchResult:
    return SearchResult(
        id=hit.item.id,
        path=hit.path,
        score=score,
        embedding_score=hit.score,
        rerank_score=rerank_score,
        width=hit.item.width,
        height=hit.item.height,
        other_paths=tuple(hit.item.paths[1:]),
        matched=matched,
    )


def read_query_image(path: str, image_size: int):
    """Decoded the way the indexer decodes, so an indexed image finds itself with similarity 1."""
    try:
        return read_image(path, draft_size=image_size).image
    except ImageSkipped as skipped:
        raise ValueError(f"cannot use {path} as a query image: {skipped.reason}") from None
