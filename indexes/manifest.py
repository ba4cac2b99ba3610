"""The manifest beside an index: which model made its vectors, how it is built, and a checksum of its file."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from mmodal.indexes.atomic import write_bytes
from mmodal.indexes.errors import IndexCorruptedError, ManifestDamagedError, ModelMismatchError

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 2  # 2: items keep object slots beside their vectors (metadata column ``slots``)


@dataclass(frozen=True)
class ModelIdentity:
    """The model whose embeddings fill an index; vectors from another model are meaningless to it."""

    name: str
    weights_hash: str
    dim: int
    slot_dim: int = 0  # width of the object slots the model writes beside each vector; 0 when it writes none


@dataclass
class Manifest:
    model: ModelIdentity
    model_source: str = ""  # where the model was loaded from, so search can load it again unasked
    metric: str = "inner_product"
    factory: str = "Flat"  # FAISS factory string of the index behind the id map
    factory_chosen_by: str = "size"  # "size" (re-chosen as the collection grows) or "user"
    count: int = 0
    index_checksum: str = ""  # blake2b of the index file
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    format_version: int = FORMAT_VERSION

    @classmethod
    def load(cls, folder: Path) -> Manifest:
        path = folder / MANIFEST_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            found = data.get("format_version")
        except (ValueError, AttributeError) as error:  # truncated, bit-flipped, not JSON, not an object
            raise ManifestDamagedError(
                f"{path} is damaged ({type(error).__name__}: {error}); the images and vectors are safe in the "
                f"metadata store: run `mmodal index --index {folder}` to rewrite it"
            ) from None
        if found != FORMAT_VERSION:
            if isinstance(found, int) and found > FORMAT_VERSION:
                made_by = "a newer mmodal; upgrade mmodal to read it, or"
            else:
                made_by = "an older mmodal that does not store object slots;"
            raise IndexCorruptedError(
                f"the index in {folder} has format {found}, but this mmodal reads only format {FORMAT_VERSION}. "
                f"It was written by {made_by} re-index the collection into a new folder "
                f"(`mmodal index PATH --index NEW_FOLDER`); it cannot be upgraded in place."
            )
        try:
            data["model"] = ModelIdentity(**data["model"])
            return cls(**data)
        except (KeyError, TypeError) as error:
            raise ManifestDamagedError(
                f"{path} is damaged (a field is missing or wrong: {error}); the images and vectors are safe in "
                f"the metadata store: run `mmodal index --index {folder}` to rewrite it"
            ) from None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def from_record(cls, model: dict, model_source: str) -> Manifest:
        """A manifest for an index whose own was lost, from the model record its metadata store keeps: the
        index file is then rebuilt from the store."""
        return cls(model=ModelIdentity(**model), model_source=model_source)

    def save(self, folder: Path) -> None:
        self.updated = time.time()
        write_bytes(folder / MANIFEST_FILE, self.to_json().encode())

    def check_model(self, model: ModelIdentity, folder: Path) -> None:
        if model == self.model:
            return
        # The same name with other weights: most often a model shipped with mmodal that a new release retrained.
        advice = (
            f"the model {model.name!r} has changed since (a newer version): index the pictures again, into a new "
            f"folder or after removing {folder}"
            if model.name == self.model.name
            else "Search it with the model that built it, or index into a new folder"
        )
        raise ModelMismatchError(
            f"the index in {folder} was built with model {_describe(self.model)} but the model in use is "
            f"{_describe(model)}; {advice}."
        )


def _describe(model: ModelIdentity) -> str:
    slots = f", {model.slot_dim}-d object slots" if model.slot_dim else ", no object slots"
    return f"{model.name!r} (weights {model.weights_hash[:12]}, {model.dim}-d vectors{slots})"


def file_checksum(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
