"""FAISS indexes: choosing a structure by collection size and memory, building, syncing, saving, searching.

Every index is an ``IDMap2`` over the chosen structure, so FAISS ids are the metadata store's item ids.
Vectors are L2-normalised embeddings compared by inner product (cosine similarity).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from mmodal.indexes.atomic import replace_file
from mmodal.indexes.metadata import MetadataStore

log = logging.getLogger(__name__)

EXACT_LIMIT = 50_000  # below this many vectors exact search is fast enough and perfectly accurate
HNSW_NEIGHBOURS = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
IVF_NPROBE = 32
MEMORY_SHARE = 0.5  # the index may use at most this share of the machine's available memory


def available_memory() -> int:
    """Bytes of memory available now (MemAvailable), or physical memory where /proc is absent."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def choose_factory(count: int, dim: int, memory: int | None = None) -> str:
    """Exact search for small collections, HNSW for large ones, IVF-PQ when full vectors would not fit."""
    memory = available_memory() if memory is None else memory
    if count < EXACT_LIMIT:
        return "Flat"
    hnsw_bytes = count * (dim * 4 + HNSW_NEIGHBOURS * 2 * 4 + 16)
    if hnsw_bytes <= MEMORY_SHARE * memory:
        return f"HNSW{HNSW_NEIGHBOURS},Flat"
    nlist = 2 ** round(math.log2(4 * math.sqrt(count)))
    sub_quantizers = max(m for m in (8, 16, 32, 64) if dim % m == 0 and m <= dim // 4)
    return f"IVF{nlist},PQ{sub_quantizers}"


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def new_index(factory: str, dim: int) -> faiss.Index:
    index = faiss.index_factory(dim, f"IDMap2,{factory}", faiss.METRIC_INNER_PRODUCT)
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    return index


def tune_for_search(index: faiss.Index) -> None:
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efSearch = HNSW_EF_SEARCH
    elif (ivf := faiss.try_extract_index_ivf(inner)) is not None:
        ivf.nprobe = IVF_NPROBE


def supports_removal(index: faiss.Index) -> bool:
    return not isinstance(faiss.downcast_index(index.index), faiss.IndexHNSW)


def build(
    factory: str, store: MetadataStore, progress: Callable[[int], None] | None = None, seed: int = 0
) -> faiss.Index:
    """A new index holding every vector of the store, streamed in chunks."""
    index = new_index(factory, store.dim)
    if not index.index.is_trained:  # the id map reports itself trained whatever it wraps
        ids = store.ids()
        sample_size = min(len(ids), 256 * _nlist(factory))
        sample = np.sort(np.random.default_rng(seed).choice(ids, size=sample_size, replace=False))
        training = np.concatenate([v for _, v in store.vectors(sample.tolist())])
        log.info("training %s on %d vectors", factory, len(training))
        index.train(training)
    for ids, vectors in store.vectors():
        index.add_with_ids(vectors, ids)
        if progress:
            progress(len(ids))
    return index


def _nlist(factory: str) -> int:
    head = factory.split(",")[0]
    return int(head[3:]) if head.startswith("IVF") else 1


def indexed_ids(index: faiss.Index) -> np.ndarray:
    return faiss.vector_to_array(index.id_map).astype(np.int64)


def sync(index: faiss.Index, store: MetadataStore) -> tuple[faiss.Index, int, int]:
    """Brings ``index`` level with the store; returns (index, added, removed). May return a rebuilt index."""
    in_store = store.ids()
    in_index = indexed_ids(index)
    to_add = np.setdiff1d(in_store, in_index, assume_unique=True)
    to_remove = np.setdiff1d(in_index, in_store, assume_unique=True)
    if len(to_remove):
        if supports_removal(index):
            index.remove_ids(to_remove)
        else:  # HNSW graphs cannot drop nodes; rebuilding is the only exact way
            log.info("rebuilding the index to drop %d removed images", len(to_remove))
            return build(_factory_of(index), store), len(to_add), len(to_remove)
    for ids, vectors in store.vectors(to_add.tolist()):
        index.add_with_ids(vectors, ids)
    return index, len(to_add), len(to_remove)


def _factory_of(index: faiss.Index) -> str:
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexHNSW):
        return f"HNSW{inner.hnsw.nb_neighbors(1)},Flat"
    raise ValueError(f"cannot rebuild a {type(inner).__name__} by itself")


def save(index: faiss.Index, path: Path) -> None:
    partial = path.with_name(f".{path.name}.partial")
    faiss.write_index(index, str(partial))
    replace_file(partial, path)


def load(path: Path) -> faiss.Index:
    index = faiss.read_index(str(path))
    tune_for_search(index)
    return index


def to_gpu(index: faiss.Index) -> faiss.Index:
    """Moves an index to all GPUs for searching when a GPU build of FAISS and a GPU are present."""
    if not gpu_available():
        return index
    try:
        return faiss.index_cpu_to_all_gpus(index)
    except RuntimeError as error:  # not every structure has a GPU version (HNSW has none)
        log.info("searching on the CPU: %s", str(error).splitlines()[0])
        return index
