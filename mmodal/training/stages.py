"""What each recipe trains: its stages in order, the model it starts from, and the data each stage reads.

A stage is one object (``Stage``): the modules it trains (everything else is frozen while it runs), its batch,
peak learning rate and length, and each step's losses. ``mmodal train`` runs a recipe's stages on one step
counter, through one loop (``mmodal.training.loop``), each stage with its own warm-up and decay.

- ``shapes``: the whole model from nothing: perception on pixels, then reading on noisy ground-truth slots,
  then reading on the detector's own slots, then speech.
- ``language``: the language half afresh over the perception, slot pooler and relation scorer of a trained
  model, so that the image vectors of its indexes stay valid.
- ``speech``: a fresh audio tower over a trained model.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from mmodal.config import ModelConfig, dense_config, tiny_config
from mmodal.data.dataset import Dataset, DatasetFormatError, read_dataset
from mmodal.data.generate import generate_shapes
from mmodal.model import MModalModel
from mmodal.training.config import TrainConfig
from mmodal.training.perception import PerceptionStage
from mmodal.training.reading import LANGUAGE_MODULES, ReadingStage, language_over, reading_tokenizer
from mmodal.training.slot_batches import SlotTrainingData
from mmodal.training.speech_recipe import (
    SpeechStage,
    SpeechTrainingData,
    build_speech_model,
    speech_audio,
    speech_datasets,
)
from mmodal.training.temperature import Temperature

log = logging.getLogger(__name__)


class Stage(Protocol):
    name: str
    modules: tuple[str, ...]  # parameter name prefixes it trains ("temperature": the contrastive temperature)
    batch_size: int
    lr: float
    mines: bool  # whether its batches take mined hard negatives
    data_kind: str  # "scenes" (the train split's pictures and scene graphs) or "speech" (spoken splits)

    def length(self, config: TrainConfig) -> int: ...

    def losses(
        self,
        model: MModalModel,
        data,
        size: int,
        mined: np.ndarray,
        step: int,
        config: TrainConfig,
        rng: np.random.Generator,
        temperature: Temperature,
    ) -> dict[str, torch.Tensor]: ...

    def validate(self, model: MModalModel, config: TrainConfig) -> dict[str, float]:
        """Figures on held-out data, logged every ``config.validate_every`` steps (none: nothing to hold out)."""
        ...


RECIPE_STAGES: dict[str, tuple[Stage, ...]] = {
    "shapes": (PerceptionStage(), ReadingStage(seen=False), ReadingStage(seen=True), SpeechStage()),
    "language": (ReadingStage(seen=False, modules=LANGUAGE_MODULES), ReadingStage(seen=True, modules=LANGUAGE_MODULES)),
    "speech": (SpeechStage(),),
}


def stages_of(config: TrainConfig) -> list[tuple[int, int, Stage]]:
    """The recipe's stages that have steps, as (first step, length, stage)."""
    out, start = [], 0
    for stage in RECIPE_STAGES[config.recipe]:
        length = stage.length(config)
        if length > 0:
            out.append((start, length, stage))
            start += length
    if not out:
        raise ValueError(f"every stage of the {config.recipe} recipe has 0 steps; give one of them some")
    return out


def stage_at(step: int, stages: list[tuple[int, int, Stage]]) -> tuple[int, int, Stage]:
    """The (first step, length, stage) that ``step`` is in (the last one past the end)."""
    for start, length, stage in stages:
        if step < start + length:
            return start, length, stage
    return stages[-1]


def needs(config: TrainConfig, kind: str) -> bool:
    return any(stage.data_kind == kind for _, _, stage in stages_of(config))


def ensure_scenes(config: TrainConfig) -> Dataset:
    """The Shapes train split, generated first when its folder holds none."""
    folder = Path(config.data)
    if not (folder / "dataset.json").is_file():
        log.info("no training data in %s: generating %d Shapes images", folder, config.n_images)
        generate_shapes(folder, n=config.n_images, seed=config.seed + 1000, split="train")
    dataset = read_dataset(folder)
    if dataset.info.get("split") != "train":
        raise DatasetFormatError(f"{folder} is a {dataset.info.get('split')!r} split; train on a train split only")
    return dataset


def ensure_speech(config: TrainConfig) -> list[Dataset]:
    """The spoken train splits, ``speech_parts`` of them generated first when the folder holds none."""
    folder = Path(config.speech_data)
    if not (folder / "dataset.json").is_file() and not any(folder.glob("*/dataset.json")):
        log.info("no spoken training data in %s: generating %d spoken splits", folder, config.speech_parts)
        for part in range(config.speech_parts):
            generate_shapes(
                folder / f"part-{part + 1}",
                n=400,
                seed=config.seed + 2000 + part,
                split="train",
                with_speech=True,
                n_queries=2000,
            )
    return speech_datasets(folder)


def build_model(config: TrainConfig, speech: SpeechTrainingData | None) -> MModalModel:
    """The model the recipe starts from: everything fresh (``shapes``), or a trained model with fresh parts."""
    if config.recipe == "language":
        return language_over(config)
    if config.recipe == "speech":
        return build_speech_model(config, speech.vocabulary, speech.bigram())
    base = {"tiny": tiny_config, "dense": dense_config}.get(config.model, ModelConfig)()
    tiny = config.model == "tiny"
    tokenizer, known = reading_tokenizer(config.seed, *((base.text.vocab_size, 2000) if tiny else ()))
    text = replace(base.text, vocab_size=len(tokenizer), known_words=known)
    audio = base.audio if speech is None else speech_audio(base.audio, speech.vocabulary, tiny)
    model = MModalModel(replace(base, text=text, audio=audio), tokenizer)
    if speech is not None:
        model.audio_tower.word_bigram.copy_(speech.bigram())
    return model


def stage_data(kind: str, config: TrainConfig, model: MModalModel, scenes: Dataset | None, speech):
    """What a stage of ``kind`` reads; speech learns to land on the text embedding the model has by now."""
    if kind == "scenes":
        return SlotTrainingData(scenes, model.input_size)
    was_training = model.training
    model.eval()
    speech.embed_texts(model)
    model.train(was_training)
    return speech
