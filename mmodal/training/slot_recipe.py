"""The "slots" recipe: the object-slot half of the model, trained in three stages on one step counter.

1. perception: the detector's dense heads and the crop classifier, from the scene graphs;
2. reasoning on ground-truth slots (noisy, no pixels, cheap): the query reader's parse targets, the relation
   scorer on object offsets, the match loss through the soft logic, and the slot pooler's contrastive loss;
   the reader also reads texts drawn from the whole grammar, half of them with their words' contexts taken
   from a one-word variant, so that it reads colour–shape pairs it has never seen;
3. the same on the slots that the trained detector predicts, so that both learn its mistakes.

The towers of the first design (language core, audio, the patch tower and the answer prefix) come from
``init_from`` and stay frozen: search reads queries with the same core the answers are written with.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import PreTrainedTokenizerFast

from encoders.pixels import letterbox_frame
from fusion.reasoner import PART_KINDS, parse_loss
from kernels.contrastive import multi_positive_nce
from mmodal.config import ModelConfig, with_slots
from mmodal.data.dataset import Dataset
from mmodal.model import DEFAULT_MODEL, WEIGHTS_FILE, MModalModel, resolve_model_path
from mmodal.shapes.semantics import COLORS, RELATIONS, SHAPES, SIZES, Scene
from mmodal.shapes.world import any_statement, one_word_changed
from mmodal.training.config import TrainConfig
from mmodal.training.data import draw_foil, draw_statement
from mmodal.training.perception import PerceptionData, perception_losses
from mmodal.training.slots import ground_truth_slots, parse_targets, relation_targets

log = logging.getLogger(__name__)

SLOT_MODULES = ("slot_encoder", "slot_pooler", "reasoner")
ATTRIBUTES = {"color": tuple(COLORS), "shape": SHAPES, "size": SIZES}
# Query kinds drawn for reasoning texts, with how often; captions describe the whole scene.
TEXT_KINDS = ("object", "binding", "binding", "relation", "relation", "count", "count", "conjunction", "caption")


def shapes_slot_config(base: ModelConfig) -> ModelConfig:
    """``base`` with object slots and a reasoner for the Shapes world's attributes and relations."""
    return with_slots(base, ATTRIBUTES, RELATIONS)


def build_slot_model(config: TrainConfig, base: MModalModel | None = None) -> MModalModel:
    """The towers of ``base``, or of the model folder ``init_from`` (the shipped model by default), with fresh
    object slots, pooler and reasoner."""
    if base is not None:
        base_config, state, tokenizer = base.config, base.state_dict(), base.tokenizer
    else:
        folder = resolve_model_path(config.init_from or DEFAULT_MODEL)
        base_config = ModelConfig.load(folder)
        state = load_file(str(folder / WEIGHTS_FILE))
        tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
    model = MModalModel(shapes_slot_config(base_config), tokenizer)
    # With no perception stage, or when asked, a model that already has slots keeps them (and its reasoner and
    # pooler) and goes on training those; otherwise the slot modules start fresh over the towers.
    if config.keep_slots and base_config.slots is None:
        raise ValueError(f"--keep-slots: {config.init_from or DEFAULT_MODEL} has no slots to keep; leave it out")
    keep_slots = (config.keep_slots or config.perception_steps == 0) and base_config.slots is not None
    load_towers(model, state, () if keep_slots else SLOT_MODULES, config.init_from or DEFAULT_MODEL)
    return model


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


def freeze_towers(model: MModalModel, trained: tuple[str, ...] = SLOT_MODULES) -> list[torch.nn.Parameter]:
    """Freezes everything but the modules named in ``trained``; returns the parameters left to train."""
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(trained))
    return [p for p in model.parameters() if p.requires_grad]


def stage_of(step: int, config: TrainConfig) -> str:
    if step < config.perception_steps:
        return "perception"
    if step < config.perception_steps + config.reasoner_steps:
        return "reasoner"
    return "joint"


def stage_bounds(step: int, config: TrainConfig) -> tuple[int, int]:
    """(first step, length) of the stage that ``step`` is in; each stage has its own warm-up and decay."""
    a, b = config.perception_steps, config.reasoner_steps
    if step < a:
        return 0, a
    if step < a + b:
        return a, b
    return a + b, config.steps - a - b


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


def slot_losses(
    model: MModalModel,
    data: SlotTrainingData,
    indices: np.ndarray,
    step: int,
    config: TrainConfig,
    rng: np.random.Generator,
) -> dict[str, torch.Tensor]:
    """One step's losses on the training images ``indices`` for the stage that ``step`` is in."""
    stage = stage_of(step, config)
    if stage == "perception":
        pixels, scenes = data.pictures.batch(indices, rng)
        return perception_losses(model.slot_encoder, pixels.to(model.device), scenes, rng)
    scenes, slots = batch_slots(model, data, indices, rng, config.slot_noise, seen=stage == "joint")
    return reasoning_losses(model, scenes, slots, rng, config)


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


def reasoning_losses(
    model: MModalModel, scenes: list[Scene], slots: torch.Tensor, rng: np.random.Generator, config: TrainConfig
) -> dict[str, torch.Tensor]:
    """Parse, relation, match and pooler losses for a batch of scenes whose slots are given (B, N, F)."""
    device = model.device
    statements = [draw_statement(s, rng, TEXT_KINDS) for s in scenes]
    foils = [f for f in (draw_foil(s, rng) for s in scenes[: len(scenes) // 2]) if f is not None]
    statements += foils
    # Texts read for their structure alone: every count, relation and phrase equally often, which the true
    # statements of a batch's scenes are not (four of a kind is rare in a scene, so "four" is rare in them).
    readings = [any_statement(rng, "train") for _ in range(config.parse_texts)]
    donors = [one_word_changed(r, rng, "train") if rng.random() < config.parse_splice else None for r in readings]
    spliced = [i for i, d in enumerate(donors) if d is not None]
    ids, mask = model.tokenize([s.text() for s in statements + readings + [donors[i] for i in spliced]])
    n, m = len(statements), len(statements) + len(readings)
    with torch.no_grad():
        tokens, _ = model.text_tokens(ids, mask)
        text_emb = model.embed_text_tokens(tokens[:n], mask[:n])
        if spliced:
            tokens = splice_contexts(tokens, ids, torch.tensor(spliced, device=device) + n, m)
    reasoner = model.reasoner
    logits = reasoner.reader(tokens[:m], mask[:m])
    targets = parse_targets(statements + readings, reasoner.config)
    losses = {"parse": config.parse_loss_weight * parse_loss(logits, {k: v.to(device) for k, v in targets.items()})}
    positions, labels = relation_targets(scenes, reasoner.config.relations)
    if len(positions):
        pair_logits = reasoner.relation_scorer(positions.to(device))[:, 0, 1]  # (M, R): object 0 to object 1
        losses["relation"] = F.binary_cross_entropy_with_logits(pair_logits.float(), labels.to(device))
    holds = torch.tensor([[st.holds(sc) for sc in scenes] for st in statements], dtype=torch.float32, device=device)
    related = torch.sigmoid(reasoner.relation_scorer(slots[..., reasoner.layout.position]).float())
    match = 0.0
    for t in range(len(statements)):
        kinds = [PART_KINDS[k] for k in targets["kind"][t].tolist()]
        parse = reasoner.parse_from_logits(logits, t, kinds)
        probability = reasoner.decide(parse, slots, related).probability.clamp(1e-5, 1 - 1e-5)
        match = match + F.binary_cross_entropy(probability, holds[t])
    losses["match"] = match / len(statements)
    image_emb = model.slot_pooler(slots)
    scale = model.logit_scale.exp().clamp(max=100.0).detach()
    similarity = scale * image_emb @ text_emb.t()  # (B, T): texts include the foils
    positives = holds.t().bool()
    n = len(scenes)
    losses["pool"] = 0.5 * (
        multi_positive_nce(similarity, positives) + multi_positive_nce(similarity[:, :n].t(), positives[:, :n].t())
    )
    return losses
