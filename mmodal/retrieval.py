"""The one interface every model offers to indexing, search and the web app (:class:`Model`), and the identity
an index keeps.

``MModalModel`` (the Shapes architecture) and the models built on pretrained weights (``mmodal.pretrained``:
the embedded ``photos`` model, CLIP and SigLIP folders, timm Swin classifiers) all implement it, so that
``mmodal index``, every search mode, the manifest and the web app treat them alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import cached_property
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from mmodal.encoders.errors import TowerInputError
from mmodal.indexes.manifest import ModelIdentity

MAX_TEXT_CHARS = 1000


def checked_texts(texts: Sequence[str]) -> list[str]:
    """The texts of a query or a question, refused when there are none or one is empty or enormous."""
    if isinstance(texts, str):
        raise TowerInputError("pass a list of texts, not a single string")
    if len(texts) == 0:
        raise TowerInputError("no texts to encode")
    for text in texts:
        if not isinstance(text, str) or not text.strip():
            raise TowerInputError("empty text: type a few words to search or ask")
        if len(text) > MAX_TEXT_CHARS:
            raise TowerInputError(f"text of {len(text)} characters is too long; keep it under {MAX_TEXT_CHARS}")
    return list(texts)


class UnsupportedQueryError(TowerInputError):
    """The model cannot take this kind of query (e.g. a voice clip for an image–text model)."""


def weights_hash(module: torch.nn.Module, settings: bytes = b"", leave_out: tuple[str, ...] = ()) -> str:
    """A hash of every tensor in ``module``'s state, by name, but those under ``leave_out``, and of the
    ``settings`` that change its vectors: two models agree when both do."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(settings)
    for name, tensor in sorted(module.state_dict().items()):
        if name.startswith(leave_out):
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@runtime_checkable
class Model(Protocol):
    """What indexing, search, questions and the web app ask of a model: images and texts (and, where the model
    hears, voice clips) in one L2-normalised space.

    Indexing decodes each file to letterboxed uint8 pixels at ``input_size`` (``mmodal.encoders.pixels``) and calls
    ``encode_pixels``; search embeds its query with ``encode_text``, ``encode_image`` and ``encode_audio``.
    Models with object slots (``has_slots``) also re-rank (``encode_and_read``, ``decide``, ``slot_boxes``) and
    answer from them; the others refuse what they cannot do with :class:`UnsupportedQueryError`.
    ``tests/test_protocols.py`` checks every implementation against it.
    """

    source: str | None  # what loads the model again: an embedded name, a folder, or "clip:PATH"…
    has_slots: bool
    slot_dim: int
    transcribes: bool

    @property
    def model_name(self) -> str: ...

    @property
    def embed_dim(self) -> int: ...

    @property
    def input_size(self) -> int:
        """Side of the letterboxed square that ``encode_pixels`` reads."""

    @property
    def identity(self) -> ModelIdentity:
        """What an index must agree with: name, a hash of the weights, the vector and slot sizes."""

    def encode_pixels(self, pixels: torch.Tensor, frames: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """Letterboxed uint8 pixels (B, 3, S, S) and each picture's frame in its square (B, 4) → float32
        embeddings (B, D) and, for a model with slots, the slots (B, N, slot_dim) with absent rows zero."""

    def encode_image(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images → (B, D) embeddings."""

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts → (B, D) embeddings."""

    def encode_audio(self, clips) -> torch.Tensor:
        """Voice clips, (waveform, sample rate) each → (B, D) embeddings of their sound."""

    def transcribe(self, clips) -> list:
        """Voice clips → what each says (:class:`mmodal.encoders.transcribe.Transcript`)."""

    def unknown_words(self, text: str) -> list[str]:
        """The words of ``text`` the model never learned to read (none for a model that reads any text)."""

    @property
    def rescores_text_hits(self) -> bool:
        """Whether text searches re-score their candidates with :meth:`rescore_text_hits`."""

    def rescore_text_hits(self, scores: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Scores for a text query's candidates (K,), given their cosine ``scores`` and stored ``vectors`` (K, D)."""

    def encode_and_read(self, texts: Sequence[str]) -> tuple[torch.Tensor, list]:
        """Texts → (B, D) embeddings and the slot reasoner's reading of each (models with slots)."""

    def decide(self, parse, slots: torch.Tensor):
        """One reading against K images' slots (K, N, slot_dim) → whether it holds of each, and which slots."""

    def slot_boxes(self, slots: torch.Tensor) -> torch.Tensor:
        """Slots (…, slot_dim) → their boxes (…, 3): centre x, centre y and diameter as fractions of the width."""

    def ask(self, images: Sequence[Image.Image], questions: Sequence[str], alternatives: int = 3) -> list:
        """Each question about its image → an answer (``mmodal.model.Answer``) with its confidence."""


class RetrievalModel:
    """What every :class:`Model` implementation shares: the identity an index checks, and the refusals of what
    a model cannot do."""

    source: str | None = None
    has_slots = False
    slot_dim = 0
    transcribes = False
    vector_settings = b""  # settings besides the weights that change the vectors (input size, bridge, prompts)
    # Modules that neither make an index's vectors nor read a typed query (a voice tower): a model retrained in
    # them alone still reads the indexes of the model it came from.
    identity_leaves_out: tuple[str, ...] = ()

    @cached_property
    def identity(self) -> ModelIdentity:
        """Name, a hash of every weight and the embedding size: what an index must agree with (hashed once)."""
        return ModelIdentity(
            name=self.model_name,
            weights_hash=weights_hash(self, self.vector_settings, self.identity_leaves_out),
            dim=self.embed_dim,
            slot_dim=self.slot_dim,
        )

    @property
    def rescores_text_hits(self) -> bool:
        return False

    def rescore_text_hits(self, scores: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        return scores

    def unknown_words(self, text: str) -> list[str]:
        return []

    def encode_audio(self, clips) -> torch.Tensor:
        raise UnsupportedQueryError(
            f"model {self.model_name!r} does not take voice queries; search by text or image, or use the `shapes` model"
        )

    def transcribe(self, clips) -> list:
        raise UnsupportedQueryError(
            f"model {self.model_name!r} does not transcribe speech; train one with `mmodal train --recipe speech`"
        )

    def encode_and_read(self, texts: Sequence[str]) -> tuple[torch.Tensor, list]:
        raise UnsupportedQueryError(f"model {self.model_name!r} has no object slots to re-rank by; search without it")

    def decide(self, parse, slots: torch.Tensor):
        raise UnsupportedQueryError(f"model {self.model_name!r} has no object slots to re-rank by; search without it")

    def slot_boxes(self, slots: torch.Tensor) -> torch.Tensor:
        raise UnsupportedQueryError(f"model {self.model_name!r} has no object slots")
