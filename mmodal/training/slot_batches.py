"""Training batches over a Shapes train split: pictures for perception, and slots for the reading stages (noisy
ground-truth slots, or the detector's own), the texts drawn per step with their truth from the semantics.

Every text is made from a scene graph and every positive is decided by ``mmodal.shapes.semantics``, so a true
image is never pushed away as a negative.
"""

from __future__ import annotations

import numpy as np
import torch

from mmodal.data.dataset import Dataset
from mmodal.encoders.pixels import letterbox_frame
from mmodal.model import MModalModel
from mmodal.shapes import text_edits, world
from mmodal.shapes.scene import Scene
from mmodal.shapes.semantics import Statement
from mmodal.training.perception import PerceptionData
from mmodal.training.slots import ground_truth_slots

# Query kinds drawn for reading texts, with how often; captions describe the whole scene.
TEXT_KINDS = ("object", "binding", "binding", "relation", "relation", "count", "count", "conjunction", "caption")


def load_towers(model: MModalModel, state: dict[str, torch.Tensor], fresh: tuple[str, ...], source: str) -> None:
    """Loads ``state`` into ``model``, but for the modules named in ``fresh``, which start anew; refuses a
    ``state`` that lacks any other weight."""
    own = model.state_dict()
    towers = {k: v for k, v in state.items() if not k.startswith(fresh) and k in own}
    missing, _ = model.load_state_dict(towers, strict=False)
    loaded = {own[k].data_ptr() for k in towers}
    # A tied weight (the core's output head is its token embedding) is saved once and loads through its twin.
    lacking = [k for k in missing if not k.startswith(fresh) and own[k].data_ptr() not in loaded]
    if lacking:
        raise ValueError(f"{source} lacks weights {lacking[:5]}; start from a trained mmodal model")


def freeze_towers(model: MModalModel, trained: tuple[str, ...]) -> list[torch.nn.Parameter]:
    """Freezes everything but the modules named in ``trained``; returns the parameters left to train."""
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(trained))
    return [p for p in model.parameters() if p.requires_grad]


class SlotTrainingData:
    """A training split for the slots recipe: pictures for perception, scene graphs and texts for reasoning."""

    def __init__(self, dataset: Dataset, source_size: int):
        self.pictures = PerceptionData(dataset, source_size)
        self.scenes = self.pictures.scenes

    def __len__(self) -> int:
        return len(self.scenes)


def embed_ground_truth(model: MModalModel, data: SlotTrainingData, indices: np.ndarray) -> torch.Tensor:
    """Slot-pooled embeddings of training scenes from their clean ground-truth slots, for mining."""
    rng = np.random.default_rng(0)
    layout, n = model.slot_encoder.layout, model.config.slots.max_slots
    slots = torch.stack([ground_truth_slots(data.scenes[int(i)], layout, n, rng) for i in indices])
    return model.slot_pooler(slots.to(model.device))


def batch_slots(
    model: MModalModel, data: SlotTrainingData, indices: np.ndarray, rng: np.random.Generator, noise: float, seen: bool
) -> tuple[list[Scene], torch.Tensor]:
    """The scenes ``indices`` and their slots (B, N, F) on the model's device: noisy ground-truth slots (no
    pixels), or with ``seen`` the slots the model's detector gives its pictures."""
    if seen:
        pixels, scenes = data.pictures.batch(indices, rng)
        slots = slots_seen(model, pixels, torch.tensor([letterbox_frame(s.width, s.height) for s in scenes]))
    else:
        layout, n_slots = model.slot_encoder.layout, model.config.slots.max_slots
        scenes = [data.scenes[int(i)] for i in indices]
        slots = torch.stack([ground_truth_slots(s, layout, n_slots, rng, noise) for s in scenes])
    return scenes, slots.to(model.device)


def splice_contexts(tokens: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor, donors_from: int) -> torch.Tensor:
    """Rows ``rows`` of the core's tokens, each with every word it shares with its donor (row ``donors_from + k``
    for the k-th row, the same text with one word changed) taken from the donor.

    A shared word's token then carries the context of another colour, shape or size than the one its text
    names, and only the changed word says which. A reader taught on such texts reads each word for itself, as
    it must for a colour and a shape it has never seen together (the core has never read them side by side).
    """
    donors = slice(donors_from, donors_from + len(rows))
    same = (ids[rows] == ids[donors]).unsqueeze(-1)
    tokens = tokens.clone()
    tokens[rows] = torch.where(same, tokens[donors], tokens[rows])
    return tokens


def slots_seen(model: MModalModel, pixels: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """The model's own slots (B, N, F) of normalised pictures and their frames, as it would index them: the
    slot encoder in evaluation mode, no gradient."""
    was_training = model.slot_encoder.training
    model.slot_encoder.eval()
    with torch.no_grad():
        slots = model.image_slots(pixels.to(model.device), frames.to(model.device)).float()
    model.slot_encoder.train(was_training)
    return slots


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
    made = text_edits.foils(scene, world.captions(scene, rng), split="train")
    return made[int(rng.integers(len(made)))][2] if made else None
