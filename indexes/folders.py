"""The one way to open an index folder, whichever layout it holds: one index (:class:`ImageIndex`) or several
shards (:class:`ShardedIndex`). Every caller (the CLI, the web app, evaluation, benchmarks) opens indexes here,
so that every command works on both layouts alike."""

from __future__ import annotations

import os
from pathlib import Path

from mmodal.indexes.collection import ImageIndex
from mmodal.indexes.errors import ModelMismatchError
from mmodal.indexes.integrity import recorded_manifest
from mmodal.indexes.manifest import Manifest, ModelIdentity
from mmodal.indexes.protocol import Index
from mmodal.indexes.shards import ShardedIndex, is_sharded, recorded_shards, shard_folder

MODES = ("r", "w")


def open_index(
    folder: str | os.PathLike,
    mode: str = "r",
    model: ModelIdentity | None = None,
    *,
    shards: int | None = None,
    factory: str | None = None,
    model_source: str = "",
) -> Index:
    """The index in ``folder``, checked against ``model`` when given.

    ``mode="r"`` opens it to search and inspect (many readers at once). ``mode="w"`` opens it to add to it, one
    writer at a time, creating it when absent: sharded when ``shards`` > 1, while an existing index keeps its
    layout (``shards`` must then agree with it).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: open an index with 'r' (to search) or 'w' (to add to it)")
    if mode == "r":
        return ShardedIndex.open(folder, model) if is_sharded(folder) else ImageIndex.open(folder, model)
    if model is None:
        raise ValueError("opening an index to add to it needs the model that embeds the images")
    shards = shards or recorded_shards(folder)
    if shards and shards > 1:
        return ShardedIndex.open_for_writing(folder, model, shards, factory, model_source)
    return ImageIndex.open_for_writing(folder, model, factory=factory, model_source=model_source)


def recorded_model(folder: str | os.PathLike) -> Manifest | None:
    """The manifest that names the model of the index in ``folder`` (every shard of a sharded index holds the
    same model's vectors); None when the folder holds no index yet."""
    return recorded_manifest(shard_folder(Path(folder), 0) if is_sharded(folder) else folder)


def remodel_empty(folder: str | os.PathLike, model: ModelIdentity, model_source: str = "") -> None:
    """Gives an index that holds no image another model (refused when it holds images)."""
    if not is_sharded(folder):
        ImageIndex.remodel_empty(folder, model, model_source)
        return
    with ShardedIndex.open(folder) as index:
        held = index.count()
    if held:
        raise ModelMismatchError(
            f"{folder} holds {held} images embedded by model {index.manifest.model.name!r}; another model needs "
            "another index folder"
        )
    n_shards = recorded_shards(folder)
    for shard in range(n_shards):
        ImageIndex.remodel_empty(shard_folder(Path(folder), shard), model, model_source)
    ShardedIndex.open_for_writing(folder, model, n_shards, model_source=model_source).close()
