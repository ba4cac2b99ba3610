"""Training batches from a Shapes dataset: images in memory, texts drawn per step, truth from the semantics.

Every text is made from a scene graph and every positive is decided by ``mmodal.shapes.semantics``, so
a true image is never pushed away as a negative. Flips are applied to image and scene graph together.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np
import soundfile
import torch
from PIL import Image
from tqdm import tqdm

from encoders.image import normalize_pixels
from encoders.pixels import letterboxed_array
from mmodal.data.dataset import Dataset
from mmodal.shapes import world
from mmodal.shapes.semantics import Scene, Statement, parse_statement

log = logging.getLogger(__name__)

# Query kinds drawn for training texts, with how often (captions describe the whole scene).
TEXT_KINDS = ("object", "binding", "binding", "relation", "relation", "count", "conjunction", "conjunction", "caption")


@dataclass
class Batch:
    """One training step's data."""

    pixels: torch.Tensor  # (L, 3, S, S) normalised: the pictures of the rows ``local``
    texts: list[str]  # B texts, text i made from image i
    positives: torch.Tensor  # (B, B) bool: image i satisfies text j
    foils: list[str | None]  # a false text per image, or None
    scenes: list[Scene]  # scene graphs as seen (after flips)
    questions: list[tuple[str, str] | None]  # a (question, answer) true of each image as seen, or None
    # The rows this process encodes; in data-parallel training every process draws the whole global batch's
    # scenes and texts (cheap) but reads only its own rows' pictures.
    local: slice = field(default_factory=lambda: slice(None))

    def local_rows(self) -> range:
        return range(len(self.texts))[self.local]


def load_pictures(dataset: Dataset, size: int) -> tuple[list[Scene], torch.Tensor]:
    """A Shapes split's scene graphs and its pictures letterboxed to ``size``: (N, 3, size, size) uint8."""
    scenes: list[Scene] = [r.scene for r in dataset.images]
    if any(s is None for s in scenes):
        raise ValueError(f"{dataset.root} has images without scene graphs; training needs a Shapes dataset")
    images = np.zeros((len(scenes), 3, size, size), dtype=np.uint8)
    for i, record in enumerate(tqdm(dataset.images, desc="loading pictures", unit="img", leave=False)):
        with Image.open(dataset.image_path(record)) as im:
            images[i] = letterboxed_array(im, size)
    return scenes, torch.from_numpy(images)


def draw_statement(scene: Scene, rng: np.random.Generator, kinds: tuple[str, ...] = TEXT_KINDS) -> Statement:
    """A query-like text true of ``scene``, of a kind drawn from ``kinds`` ("caption": a whole-scene caption)."""
    while True:
        kind = kinds[int(rng.integers(len(kinds)))]
        if kind == "caption":
            captions = world.captions(scene, rng)
            return captions[int(rng.integers(len(captions)))][1]
        statement = world.query_for(kind, scene, rng)
        if statement is not None:
            return statement


def draw_foil(scene: Scene, rng: np.random.Generator) -> Statement | None:
    """A minimally changed caption that is false of ``scene`` (colour swap, relation swap or count change)."""
    made = world.foils(scene, world.captions(scene, rng), split="train")
    return made[int(rng.integers(len(made)))][2] if made else None


class ShapesTrainingData:
    """Holds a training split in memory and draws batches from it."""

    def __init__(self, dataset: Dataset, image_size: int):
        self.image_size = image_size
        self.scenes, self.images = load_pictures(dataset, image_size)
        self.spoken: list[tuple[str, np.ndarray]] = []
        for query in dataset.queries:
            if query.audio:
                audio, rate = soundfile.read(dataset.root / query.audio, dtype="int16")
                self.spoken.append((query.text, audio))
        self.spoken_statements = [parse_statement(t) for t, _ in self.spoken]

    def __len__(self) -> int:
        return len(self.scenes)

    # ------------------------------------------------------------------------------------------ pieces

    def pixels(self, indices: np.ndarray, flips: np.ndarray) -> torch.Tensor:
        """Normalised pixels with per-image horizontal/vertical flips: (B, 3, S, S)."""
        batch = self.images[torch.as_tensor(indices)].clone()
        for i, (fx, fy) in enumerate(flips):
            dims = [d for d, f in ((3, fx), (2, fy)) if f]
            if dims:
                batch[i] = batch[i].flip([d - 1 for d in dims])
        return normalize_pixels(batch)

    def scene(self, index: int, flip: tuple[bool, bool]) -> Scene:
        scene = self.scenes[index]
        fx, fy = flip
        if not (fx or fy):
            return scene
        objects = tuple(replace(o, cx=1 - o.cx if fx else o.cx, cy=1 - o.cy if fy else o.cy) for o in scene.objects)
        return replace(scene, objects=objects)

    def text_for(self, scene: Scene, rng: np.random.Generator, recipe: str) -> Statement:
        """A text true of ``scene``: a whole-scene caption for the CLIP recipe, else a query-like text."""
        return draw_statement(scene, rng, ("caption",) if recipe == "clip" else TEXT_KINDS)

    # ------------------------------------------------------------------------------------------ batches

    def batch(self, indices: np.ndarray, rng: np.random.Generator, recipe: str, local: slice = slice(None)) -> Batch:
        flips = rng.random((len(indices), 2)) < 0.5
        scenes = [self.scene(int(i), (bool(fx), bool(fy))) for i, (fx, fy) in zip(indices, flips)]
        statements = [self.text_for(s, rng, recipe) for s in scenes]
        if recipe == "clip":
            positives = torch.eye(len(indices), dtype=torch.bool)
            foils: list[str | None] = [None] * len(indices)
        else:
            positives = torch.tensor([[st.holds(sc) for st in statements] for sc in scenes])
            foils = [self._foil(sc, rng) for sc in scenes]
        return Batch(
            pixels=self.pixels(indices[local], flips[local]),
            texts=[s.text() for s in statements],
            positives=positives,
            foils=foils,
            scenes=scenes,
            questions=[self._question(sc, rng) for sc in scenes] if recipe == "full" else [None] * len(scenes),
            local=local,
        )

    @staticmethod
    def _question(scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
        asked = world.questions(scene, rng, split="train")
        if not asked:
            return None
        question, answer = asked[int(rng.integers(len(asked)))]
        return question.text(), answer

    @staticmethod
    def _foil(scene: Scene, rng: np.random.Generator) -> str | None:
        foil = draw_foil(scene, rng)
        return foil.text() if foil else None

    def audio_batch(self, n: int, rng: np.random.Generator) -> tuple[list[int], list[tuple[np.ndarray, int]]]:
        """``n`` spoken queries: their indices and (waveform, 16000) clips."""
        picks = rng.choice(len(self.spoken), size=min(n, len(self.spoken)), replace=False)
        return [int(p) for p in picks], [(self.spoken[p][1].astype(np.float32) / 32768.0, 16_000) for p in picks]
