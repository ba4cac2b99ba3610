"""The cost model of SCALE.md: embedding, index memory, shards, machines and query fan-out for 100M and 1B
images, computed from inputs this script measures on the machine it runs on.

    python benchmarks/scale.py [--vectors 100000] [--machine-gib 128] [--json]

Measured here: the shipped model's image encoding rate (batch 64, on CUDA when present, else the CPU's
threads); the bytes per vector of each FAISS structure the index layer uses (Flat, HNSW32,Flat, IVF-PQ) and
of the metadata store (paths, hashes, object slots), from files written through the real index layer; the
search time of one shard at several sizes, and the cost of merging shards' top-k. Chosen, not measured: the
machine's memory (--machine-gib) and that an index may use half of it (the index layer's own rule).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from mmodal.indexes import vectors as index_vectors
from mmodal.indexes.folders import open_index
from mmodal.indexes.manifest import ModelIdentity
from mmodal.indexes.metadata import NewItem

TARGETS = {"100M": 100_000_000, "1B": 1_000_000_000}
IVF_NLIST = 1024
STRUCTURES = ("Flat", "HNSW32,Flat", f"IVF{IVF_NLIST},PQ16")
MEMORY_SHARE = index_vectors.MEMORY_SHARE


def encoding_rate() -> dict:
    from mmodal.loading import load_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model("shapes", device=device)
    size = model.input_size
    pixels = torch.randint(0, 256, (64, 3, size, size), dtype=torch.uint8)
    frames = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(64, -1)
    model.encode_pixels(pixels, frames)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        model.encode_pixels(pixels, frames)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    return {"device": name, "images_per_s": 64 / statistics.median(times), "dim": model.identity.dim}


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def structure_costs(n: int, dim: int, queries: np.ndarray) -> dict:
    """Bytes per vector of each structure (its serialised size over n) and its search time for one query."""
    data = unit_vectors(n, dim, 0)
    out = {}
    for factory in STRUCTURES:
        index = index_vectors.new_index(factory, dim)
        if not index.index.is_trained:
            index.train(data[: min(n, 256 * 1024)])
        index.add_with_ids(data, np.arange(n, dtype=np.int64))
        index_vectors.tune_for_search(index)
        bytes_per_vector = len(faiss.serialize_index(index)) / n
        out[factory] = {"bytes_per_vector": round(bytes_per_vector, 1), "search_ms": _search_ms(index, queries)}
    return out


def _search_ms(index, queries: np.ndarray) -> float:
    faiss.omp_set_num_threads(1)  # one query on one core, as each shard answers it
    times = []
    for q in queries:
        start = time.perf_counter()
        index.search(q[None], 10)
        times.append(time.perf_counter() - start)
    faiss.omp_set_num_threads(0)
    return round(1000 * statistics.median(times), 4)


def hnsw_growth(dim: int, sizes: list[int], queries: np.ndarray, measured: dict[int, float]) -> dict:
    """HNSW search time at growing sizes (with those already ``measured``), fitted as a + b·log2(n) to reach a
    shard's size."""
    sizes = sorted(set(sizes) - set(measured))
    times = []
    for n in sizes:
        index = index_vectors.new_index("HNSW32,Flat", dim)
        index.add_with_ids(unit_vectors(n, dim, n), np.arange(n, dtype=np.int64))
        index_vectors.tune_for_search(index)
        times.append(_search_ms(index, queries))
    sizes, times = zip(*sorted({**dict(zip(sizes, times)), **measured}.items()))
    slope, intercept = np.polyfit(np.log2(sizes), times, 1)
    return {"sizes": sizes, "search_ms": times, "fit": {"ms_at_log2_n_0": intercept, "ms_per_doubling": slope}}


def metadata_bytes_per_image(dim: int, slot_dim: int, n: int = 5000) -> float:
    """The metadata store's bytes per image (paths, hash, vector copy, object slots), written for real."""
    rng = np.random.default_rng(1)
    items = [
        NewItem(
            f"/photos/2026/12/holiday/IMG_{i:06d}.jpg",
            f"{rng.integers(2**62):016x}" * 4,
            2_000_000,
            1_700_000_000_000_000_000 + i,
            4032,
            3024,
            "JPEG",
            v,
            rng.normal(size=(4, slot_dim)).astype(np.float32),
        )
        for i, v in enumerate(unit_vectors(n, dim, 2))
    ]
    with tempfile.TemporaryDirectory() as tmp:
        model = ModelIdentity("shapes", "0" * 32, dim, slot_dim)
        with open_index(Path(tmp) / "index", "w", model, factory="Flat") as index:
            for start in range(0, n, 500):
                index.write_batch(items[start : start + 500])
        files = [p for p in (Path(tmp) / "index").iterdir() if p.name.startswith("metadata")]
        return sum(p.stat().st_size for p in files) / n


def merge_ms(dim: int, n_shards: int, queries: np.ndarray) -> float:
    """What searching through the shard layer costs beyond the shards' own search: the fan-out and the merge of
    their top-k, measured on tiny shards so the search itself is negligible."""
    rng = np.random.default_rng(3)
    with tempfile.TemporaryDirectory() as tmp:
        model = ModelIdentity("shapes", "0" * 32, dim, 0)
        items = [
            NewItem(f"/p/{i}.jpg", f"{rng.integers(2**62):016x}", 1, 1, 8, 8, "JPEG", v)
            for i, v in enumerate(unit_vectors(20 * n_shards, dim, 4))
        ]
        with open_index(Path(tmp) / "s", "w", model, shards=n_shards, factory="Flat") as sharded:
            sharded.write_batch(items)
            sharded.sync()
        with open_index(Path(tmp) / "s", model=model) as sharded:
            sharded.search(queries[:1], 10)
            times = []
            for q in queries:
                start = time.perf_counter()
                sharded.search(q[None], 10)
                times.append(time.perf_counter() - start)
    return round(1000 * statistics.median(times), 3)


def plan(measured: dict, machine_gib: float) -> dict:
    """Shards, machines and latency for each target, from the measured inputs."""
    usable = machine_gib * 2**30 * MEMORY_SHARE
    rate = measured["encoding"]["images_per_s"]
    fit = measured["hnsw_growth"]["fit"]
    out = {}
    for label, n in TARGETS.items():
        row = {"embedding_device_hours": round(n / rate / 3600, 1)}
        for factory, cost in measured["structures"].items():
            index_bytes = n * cost["bytes_per_vector"]
            per_shard = max(1, math.floor(usable / cost["bytes_per_vector"]))
            shards = math.ceil(n / per_shard)
            shard_n = math.ceil(n / shards)
            measured_n = measured["structure_vectors"]
            if factory.startswith("HNSW"):
                shard_ms = fit["ms_at_log2_n_0"] + fit["ms_per_doubling"] * math.log2(shard_n)
            elif factory.startswith("IVF"):  # scans nprobe lists of n / nlist vectors, nlist chosen by size
                shard_ms = cost["search_ms"] * (shard_n / _nlist(shard_n)) / (measured_n / IVF_NLIST)
            else:  # a flat scan reads every vector
                shard_ms = cost["search_ms"] * shard_n / measured_n
            merge = _merge_ms(measured["merge_ms"], shards)
            row[factory] = {
                "index_gib": round(index_bytes / 2**30, 1),
                "shards": shards,
                "machines": shards,
                "query_ms": round(shard_ms + merge, 2),
            }
        row["metadata_gib"] = round(n * measured["metadata_bytes_per_image"] / 2**30, 1)
        out[label] = row
    return out


def _nlist(n: int) -> int:
    return int(index_vectors.choose_factory(n, 128, memory=0).split(",")[0][3:])


def _merge_ms(merge: dict, shards: int) -> float:
    """The measured fan-out cost at this many shards (linear beyond the largest measured count)."""
    if shards <= 1:
        return 0.0
    counts = sorted(int(s) for s in merge)
    at = next((c for c in counts if c >= shards), counts[-1])
    return merge[str(at)] * max(1.0, shards / at)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vectors", type=int, default=100_000, help="vectors in each measured structure")
    parser.add_argument("--machine-gib", type=float, default=128.0, help="memory of one index machine")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    encoding = encoding_rate()
    dim = encoding["dim"]
    queries = unit_vectors(200, dim, 9)
    measured = {
        "encoding": encoding,
        "structure_vectors": args.vectors,
        "structures": structure_costs(args.vectors, dim, queries),
    }
    measured["hnsw_growth"] = hnsw_growth(
        dim,
        [args.vectors // 8, args.vectors // 4, args.vectors // 2],
        queries,
        {args.vectors: measured["structures"]["HNSW32,Flat"]["search_ms"]},
    )
    measured |= {
        "metadata_bytes_per_image": round(metadata_bytes_per_image(dim, 19), 1),
        "merge_ms": {str(s): merge_ms(dim, s, queries[:50]) for s in (2, 4, 8, 16)},
    }
    report = {"measured": measured, "machine_gib": args.machine_gib, "plan": plan(measured, args.machine_gib)}
    print(json.dumps(report, indent=2, default=float) if args.json else markdown(report))


def markdown(report: dict) -> str:
    m = report["measured"]
    lines = [
        f"Encoding: {m['encoding']['images_per_s']:.1f} images/s on {m['encoding']['device']} (shipped model, "
        f"{m['encoding']['dim']}-d vectors). Metadata store: {m['metadata_bytes_per_image']:.0f} bytes per image "
        "on disk. Fan-out and merge through the shard layer: "
        + ", ".join(f"{v} ms at {k} shards" for k, v in m["merge_ms"].items())
        + ".",
        "",
        f"| structure | bytes per vector | one query at {m['structure_vectors']:,} vectors, one core |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {f} | {c['bytes_per_vector']} | {c['search_ms']} ms |" for f, c in m["structures"].items()]
    growth = m["hnsw_growth"]
    lines += [
        "",
        "HNSW search time by size: "
        + ", ".join(f"{n:,}: {t} ms" for n, t in zip(growth["sizes"], growth["search_ms"]))
        + f" (fit: {growth['fit']['ms_per_doubling']:.3f} ms per doubling).",
        "",
        f"| images | structure | index GiB | shards = machines ({report['machine_gib']:.0f} GiB, half for the index) "
        "| query ms | metadata GiB | encoding device-hours |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, row in report["plan"].items():
        for factory in m["structures"]:
            cell = row[factory]
            lines.append(
                f"| {label} | {factory} | {cell['index_gib']} | {cell['shards']} | {cell['query_ms']} | "
                f"{row['metadata_gib']} | {row['embedding_device_hours']} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
