"""Search latency (text query → top 10, text encoder included; with and without the slot reasoner re-ranking
the top RERANK_TOP) and recall@10 of the index against exact search.

    python benchmarks/search.py --sizes 100000 1000000

The index part uses synthetic clustered unit vectors (the shape real embeddings have), each stored with the
ground-truth slots of a random Shapes scene, through the real index layer (SQLite metadata store + FAISS,
structure chosen by size as `mmodal index` does); queries go through the same `Searcher` as `mmodal search`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from mmodal.indexes.folders import open_index
from mmodal.indexes.metadata import NewItem
from mmodal.indexes.protocol import Index
from mmodal.model import MModalModel
from mmodal.search import RERANK_TOP, Query, Searcher
from mmodal.shapes.world import sample_scene
from mmodal.training.slots import ground_truth_slots

QUERY_TEXTS = [
    f"a {c} {s} left of a {c2} {s2}"
    for c, c2 in (("red", "blue"), ("green", "white"), ("yellow", "purple"))
    for s, s2 in (("circle", "square"), ("star", "hexagon"), ("triangle", "circle"))
]


def clustered_vectors(n: int, dim: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)] + 0.35 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def scene_slots(model: MModalModel, count: int, rng: np.random.Generator) -> list[np.ndarray | None]:
    """Slot rows of ``count`` random scenes (None for a model without slots)."""
    if not model.has_slots:
        return [None] * count
    layout, n = model.slot_encoder.layout, model.config.slots.max_slots
    rows = [ground_truth_slots(sample_scene(rng, "test"), layout, n, rng, noise=0.5).numpy() for _ in range(count)]
    return [r[r[:, 0] > 0] for r in rows]


def fill(index: Index, n: int, dim: int, centres: np.ndarray, slots: list, rng: np.random.Generator) -> np.ndarray:
    kept = []
    for start in range(0, n, 20_000):
        vecs = clustered_vectors(min(20_000, n - start), dim, rng, centres)
        kept.append(vecs)
        index.write_batch(
            NewItem(f"/photos/{start + i:07d}.jpg", f"{start + i:032x}", 1, 1, 64, 64, "JPEG", v, slots[i % len(slots)])
            for i, v in enumerate(vecs)
        )
    return np.concatenate(kept)


def run(size: int, model: MModalModel, queries: int, rng: np.random.Generator) -> dict:
    identity = model.identity
    dim = identity.dim
    centres = rng.standard_normal((2000, dim)).astype(np.float32)
    folder = Path(tempfile.mkdtemp(prefix="mmodal-bench-search-"))
    try:
        with open_index(folder, "w", identity) as index:
            start = time.perf_counter()
            data = fill(index, size, dim, centres, scene_slots(model, 2000, rng), rng)
            store_seconds = time.perf_counter() - start
            start = time.perf_counter()
            index.sync()
            build_seconds = time.perf_counter() - start
        index = open_index(folder, model=identity)
        searcher = Searcher(model, index)
        latencies: dict[bool, list[float]] = {False: [], True: []}
        for rerank in (False, True) if model.has_slots else (False,):
            for i in range(queries):
                start = time.perf_counter()
                searcher.search(Query(text=QUERY_TEXTS[i % len(QUERY_TEXTS)]), k=10, rerank=rerank)
                latencies[rerank].append(time.perf_counter() - start)
        probes = clustered_vectors(1000, dim, rng, centres)
        exact = faiss.IndexFlatIP(dim)
        exact.add(data)
        _, truth = exact.search(probes, 10)
        found = index.search(probes, 10)
        recall = np.mean(
            [len({int(h.path[8:15]) for h in hits} & set(row.tolist())) / 10 for hits, row in zip(found, truth)]
        )
        index.close()
        return {
            "vectors": size,
            "index_type": index.manifest.factory,
            "store_seconds": round(store_seconds, 1),
            "build_seconds": round(build_seconds, 1),
            "p50_ms": round(1000 * float(np.percentile(latencies[False], 50)), 2),
            "p99_ms": round(1000 * float(np.percentile(latencies[False], 99)), 2),
            **(
                {
                    "reranked_top": RERANK_TOP,
                    "reranked_p50_ms": round(1000 * float(np.percentile(latencies[True], 50)), 2),
                    "reranked_p99_ms": round(1000 * float(np.percentile(latencies[True], 99)), 2),
                }
                if latencies[True]
                else {}
            ),
            "recall_at_10": round(float(recall), 4),
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--model", default="shapes")
    args = parser.parse_args()
    model = MModalModel.from_pretrained(args.model)
    rng = np.random.default_rng(0)
    for size in args.sizes:
        print(json.dumps(run(size, model, args.queries, rng)), flush=True)


if __name__ == "__main__":
    main()
