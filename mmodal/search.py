"""Search an index by text, example image or voice: FAISS candidates (late fusion), re-ranked by early fusion.

A query may combine parts, as in "like this photo, but blue": the embeddings of every positive part are
summed, each negative text is subtracted at half weight, and the result is normalised. When the query
has text, the top candidates are re-scored by the early-fusion matcher: the probability that the image
matches the text and matches none of the negative texts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from indexes.collection import Hit, ImageIndex
from mmodal.data.images import ImageSkipped, read_image
from mmodal.model import MModalModel
from mmodal.pipeline import model_identity

log = logging.getLogger(__name__)

RERANK_TOP = 50
NEGATIVE_WEIGHT = 0.5


class EmptyQueryError(ValueError):
    """A search needs at least one of: text, an image, a voice clip."""


@dataclass(frozen=True)
class Query:
    text: str | None = None
    image: str | None = None  # path of an example image
    audio: tuple[np.ndarray, int] | None = None  # (waveform, sample rate)
    negative: tuple[str, ...] = ()


@dataclass(frozen=True)
class SearchResult:
    path: str
    score: float  # what the ranking used: the match probability when re-ranked, else the cosine similarity
    embedding_score: float
    rerank_score: float | None
    width: int
    height: int
    other_paths: tuple[str, ...] = ()  # further copies of the same picture

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "score": round(self.score, 6),
            "embedding_score": round(self.embedding_score, 6),
            "rerank_score": None if self.rerank_score is None else round(self.rerank_score, 6),
            "width": self.width,
            "height": self.height,
            "other_paths": list(self.other_paths),
        }


class Searcher:
    """A model and an index that agree with each other."""

    def __init__(self, model: MModalModel, index: ImageIndex):
        index.manifest.check_model(model_identity(model), index.folder)
        self.model = model
        self.index = index

    def query_vector(self, query: Query) -> np.ndarray:
        parts = []
        if query.text is not None:
            parts.append(self.model.encode_text([query.text])[0])
        if query.image is not None:
            parts.append(
                self.model.encode_image([read_query_image(query.image, self.model.config.image.image_size)])[0]
            )
        if query.audio is not None:
            parts.append(self.model.encode_audio([query.audio])[0])
        if not parts:
            raise EmptyQueryError("give a text, an image (--image) or a voice clip (--audio) to search for")
        vector = torch.stack(parts).sum(0)
        if query.negative:
            vector = vector - NEGATIVE_WEIGHT * self.model.encode_text(list(query.negative)).sum(0)
        return torch.nn.functional.normalize(vector, dim=0).float().cpu().numpy()

    def search(
        self, query: Query, k: int = 10, rerank: bool = True, rerank_top: int = RERANK_TOP
    ) -> list[SearchResult]:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        rerank = rerank and query.text is not None
        hits = self.index.search(self.query_vector(query), max(k, rerank_top) if rerank else k)[0]
        if not rerank or not hits:
            return [_result(hit, hit.score, None) for hit in hits[:k]]
        probabilities = self._match(hits, query)
        order = sorted(range(len(hits)), key=lambda i: (-probabilities[i], -hits[i].score))
        return [_result(hits[i], probabilities[i], probabilities[i]) for i in order[:k]]

    def _match(self, hits: Sequence[Hit], query: Query) -> list[float]:
        """Early-fusion probabilities; a candidate whose file can no longer be read keeps its place at -1."""
        images, readable = [], []
        for i, hit in enumerate(hits):
            try:
                images.append(read_image(hit.path, draft_size=self.model.config.image.image_size).image)
                readable.append(i)
            except ImageSkipped as skipped:
                log.warning("cannot re-rank %s: %s", hit.path, skipped.reason)
        scores = [-1.0] * len(hits)
        if not images:
            return scores
        match = self.model.match(images, [query.text] * len(images))
        for negative in query.negative:
            match = match * (1 - self.model.match(images, [negative] * len(images)))
        for i, p in zip(readable, match.tolist()):
            scores[i] = p
        return scores


def _result(hit: Hit, score: float, rerank_score: float | None) -> SearchResult:
    return SearchResult(
        path=hit.path,
        score=score,
        embedding_score=hit.score,
        rerank_score=rerank_score,
        width=hit.item.width,
        height=hit.item.height,
        other_paths=tuple(hit.item.paths[1:]),
    )


def read_query_image(path: str, image_size: int):
    """Decoded the way the indexer decodes, so an indexed image finds itself with similarity 1."""
    try:
        return read_image(path, draft_size=image_size).image
    except ImageSkipped as skipped:
        raise ValueError(f"cannot use {path} as a query image: {skipped.reason}") from None


def read_query_audio(path: str) -> tuple[np.ndarray, int]:
    """A voice clip from a sound file (WAV, FLAC, OGG…) as (waveform, sample rate)."""
    import soundfile

    try:
        waveform, rate = soundfile.read(path, dtype="float32", always_2d=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"no audio file at {path}") from None
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as error:
        raise ValueError(f"cannot read {path} as audio ({error}); give a WAV, FLAC or OGG file") from None
    return waveform, rate
