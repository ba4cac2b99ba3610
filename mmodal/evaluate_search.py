"""Search figures on a Shapes test split: P@10 and mAP per query kind, recall@K, P@10 per phrase structure, and
the reasoner alone on ground-truth slots; the rankings come from a real index searched as `mmodal search` does."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from mmodal.data.dataset import Dataset
from mmodal.indexes.folders import open_index
from mmodal.indexes.metadata import NewItem, present_slots
from mmodal.model import MModalModel
from mmodal.search import Query, Searcher
from mmodal.shapes.scene import SpecError
from mmodal.shapes.semantics import parse_statement

RECALL_AT = (10, 50, 100, 200, 500)


def precision_at_10(ranking: np.ndarray, relevant: set[int]) -> float:
    """Relevant images in the top 10 over min(10, number relevant), as the spec defines it."""
    hits = sum(int(i) in relevant for i in ranking[:10])
    return hits / min(10, len(relevant))


def average_precision(ranking: np.ndarray, relevant: set[int]) -> float:
    hits, total = 0, 0.0
    for rank, index in enumerate(ranking, start=1):
        if int(index) in relevant:
            hits += 1
            total += hits / rank
    return total / len(relevant)


def search_metrics(rankings: list[np.ndarray], dataset: Dataset, index_of: dict[str, int], queries=None) -> dict:
    """P@10 and mAP per query kind of ``rankings``, one per query of ``queries`` (by default all the dataset's)."""
    per_kind: dict[str, dict[str, list[float]]] = defaultdict(lambda: {"p@10": [], "map": []})
    for query, ranking in zip(dataset.queries if queries is None else queries, rankings):
        relevant = {index_of[i] for i in query.relevant}
        for kind in [query.kind, "all"] if query.kind else ["all"]:
            per_kind[kind]["p@10"].append(precision_at_10(ranking, relevant))
            per_kind[kind]["map"].append(average_precision(ranking, relevant))
    return {
        kind: {
            "p@10": round(float(np.mean(v["p@10"])), 4),
            "map": round(float(np.mean(v["map"])), 4),
            "n": len(v["p@10"]),
        }
        for kind, v in sorted(per_kind.items())
    }


def recall_at(rankings: list[np.ndarray], dataset: Dataset, index_of: dict[str, int]) -> dict:
    """Share of each query's relevant images that the embedding puts in its top K, per query kind."""
    per_kind: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for query, ranking in zip(dataset.queries, rankings):
        relevant = {index_of[i] for i in query.relevant}
        for kind in [query.kind, "all"] if query.kind else ["all"]:
            for k in RECALL_AT:
                per_kind[kind][k].append(len(relevant & set(ranking[:k].tolist())) / len(relevant))
    return {kind: {str(k): round(float(np.mean(v)), 4) for k, v in ks.items()} for kind, ks in sorted(per_kind.items())}


def structure_metrics(rankings: list[np.ndarray], dataset: Dataset, index_of: dict[str, int]) -> dict:
    """P@10 per phrase structure of the queries (their kind, and the form of each phrase in each position)."""
    per_structure: dict[str, list[float]] = defaultdict(list)
    for query, ranking in zip(dataset.queries, rankings):
        try:
            structure = parse_statement(query.text).structure
        except SpecError:
            continue
        per_structure[structure].append(precision_at_10(ranking, {index_of[i] for i in query.relevant}))
    return {s: {"p@10": round(float(np.mean(v)), 4), "n": len(v)} for s, v in sorted(per_structure.items())}


class Ranker:
    """The test images in a real index (their vectors and present slots, as indexing stores them) and the
    Searcher that `mmodal search` uses over it, so the rankings measured are the ones users get."""

    def __init__(self, model, dataset: Dataset, image_emb, slots, folder: Path, rerank_top: int):
        sizes = [Image.open(dataset.image_path(r)).size for r in dataset.images]
        with open_index(folder, "w", model.identity) as writer:
            ids = writer.write_batch(
                [
                    NewItem(
                        path=str(dataset.image_path(r)),
                        content_hash=r.id,
                        size=0,
                        mtime_ns=0,
                        width=size[0],
                        height=size[1],
                        format=None,
                        vector=e.float().numpy(),
                        slots=present_slots(s.float().numpy()),
                    )
                    for r, size, e, s in zip(dataset.images, sizes, image_emb, slots)
                ]
            )
            writer.sync()
        self.row_of = {item_id: row for row, item_id in enumerate(ids)}
        self.index = open_index(folder, model=model.identity)
        self.searcher = Searcher(model, self.index)
        self.rerank_top = rerank_top
        self.n = len(ids)

    def rank(self, query: Query, rerank: bool = True) -> np.ndarray:
        """Every test image's row, best first."""
        hits = self.searcher.search(query, k=self.n, rerank=rerank, rerank_top=self.rerank_top)
        return np.array([self.row_of[hit.id] for hit in hits])

    def close(self) -> None:
        self.index.close()


def ground_truth_search(model: MModalModel, dataset: Dataset, parses, index_of: dict[str, int]) -> dict:
    """The reasoner alone: every query decided over every image's ground-truth slots (perception taken out)."""
    from mmodal.training.slots import ground_truth_slots

    rng = np.random.default_rng(0)
    layout = model.slot_encoder.layout
    truth = torch.stack(
        [ground_truth_slots(r.scene, layout, model.config.slots.max_slots, rng) for r in dataset.images]
    )
    rankings = []
    for parse in tqdm(parses, desc="ground-truth slots", unit="query", leave=False):
        probability = model.decide(parse, truth).probability.float().cpu().numpy()
        rankings.append(np.argsort(-probability, kind="stable"))
    return search_metrics(rankings, dataset, index_of)
