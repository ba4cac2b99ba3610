"""An index folder's files checked against each other: the FAISS file against the manifest's checksum, and a
damaged manifest rebuilt from the model record that the metadata store keeps."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from pathlib import Path

import faiss

from mmodal.indexes import vectors
from mmodal.indexes.errors import IndexCorruptedError, ManifestDamagedError
from mmodal.indexes.manifest import MANIFEST_FILE, Manifest, file_checksum
from mmodal.indexes.metadata import METADATA_FILE

log = logging.getLogger(__name__)

INDEX_FILE = "vectors.faiss"
MODEL_RECORD = "model"  # the metadata store's copy of the manifest's model, to rebuild a lost manifest


def recorded_manifest(folder: str | os.PathLike) -> Manifest | None:
    """The manifest of the index in ``folder`` (rebuilt from the metadata store's record when it is damaged),
    for the model that built it; None when the folder holds no index."""
    folder = Path(folder)
    if not (folder / MANIFEST_FILE).is_file():
        return None
    try:
        return Manifest.load(folder)
    except ManifestDamagedError as damage:
        return manifest_from_store(folder, damage)


def manifest_from_store(folder: Path, damage: ManifestDamagedError) -> Manifest:
    """The manifest rebuilt from the model record the metadata store keeps; the index file is then rebuilt
    from the store, since its checksum is unknown."""
    path = folder / METADATA_FILE
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT value FROM properties WHERE key = ?", (MODEL_RECORD,)).fetchone()
        finally:
            db.close()
        record = json.loads(row[0]) if row else None
    except (sqlite3.Error, ValueError):
        record = None
    if record is None:
        raise IndexCorruptedError(
            f"{damage}; but {path} keeps no record of the model (it is missing, damaged, or was written by an "
            "older mmodal), so re-index the collection into a new folder"
        ) from None
    return Manifest.from_record(record["model"], record.get("model_source", ""))


def read_checked(folder: Path, manifest: Manifest, repair: bool) -> faiss.Index | None:
    """The FAISS file, verified against the manifest; None when there is none yet.

    A writer (``repair``) answers a damaged file by rebuilding it from the store, which holds every vector.
    """
    path = folder / INDEX_FILE
    if not path.exists():
        if manifest.count and not repair:
            raise IndexCorruptedError(f"{path} is missing; run `mmodal index --index {folder}` to rebuild it")
        return None
    if file_checksum(path) != manifest.index_checksum:
        if repair:
            log.warning("%s does not match its manifest's checksum; rebuilding it from the metadata store", path)
            return None
        raise IndexCorruptedError(
            f"{path} is damaged (its checksum differs from the manifest's); "
            f"run `mmodal index --index {folder}` to rebuild it from the metadata store"
        )
    return vectors.load(path)


def same_structure(index: faiss.Index, factory: str) -> bool:
    inner = faiss.downcast_index(index.index)
    if factory == "Flat":
        return isinstance(inner, faiss.IndexFlat)
    if factory.startswith("HNSW"):
        return isinstance(inner, faiss.IndexHNSW)
    return faiss.try_extract_index_ivf(inner) is not None
