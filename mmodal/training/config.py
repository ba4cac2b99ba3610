"""The training configuration, saved beside every checkpoint."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

# What `mmodal train --recipe` trains, each a sequence of stages on one step counter (see mmodal.training.stages):
# "shapes" the whole model from nothing; "language" the language half over the perception of init_from;
# "speech" the audio tower over init_from.
RECIPES = ("shapes", "language", "speech")
# What the speech stage adds to the probe that first heard the words: "augment" (tempo, rooms, microphones,
# noise, gain, SpecAugment), "wordless" (clips that must transcribe as nothing), "align" (the audio embedding
# onto the text's, over the tower's tokens as the words made them), "grouped" (batches of clips of about the
# same length). See mmodal.training.speech_recipe.
SPEECH_EXTRAS = ("augment", "wordless", "align", "grouped")


@dataclass
class TrainConfig:
    """How to train: data, stages and their schedules, objectives and checkpoints."""

    out: str = "runs/shapes"  # run folder: checkpoints and the final model
    data: str = "data/shapes-train"  # training dataset folder (generated when missing)
    n_images: int = 12000  # images to generate when the dataset folder is missing
    speech_data: str = "data/shapes-speech"  # spoken train splits (generated when missing)
    seed: int = 0
    recipe: str = "shapes"
    model: str = "default"  # "default", "tiny" (tests) or "dense" (the default with a dense language core)
    init_from: str | None = None  # recipes "language" and "speech": the model they build on (default: shipped)
    batch_size: int | None = None  # every stage's batch (default: each stage's own)
    lr: float | None = None  # every stage's peak learning rate (default: each stage's own)
    weight_decay: float = 0.05
    warmup_steps: int = 200  # at most a fifth of each stage
    perception_steps: int = 3600  # detector and crop classifier, on pixels
    reading_steps: int = 2000  # the language half (and pooler, reasoner) on noisy ground-truth slots
    joint_steps: int = 600  # the same on the detector's own slots
    speech_steps: int = 3000  # the audio tower's words and embedding
    speech_parts: int = 3  # spoken train splits of 2,000 queries to generate when speech_data has none
    worded_share: float = 0.7  # share of texts worded as people type them (else the grammar's)
    slot_noise: float = 1.0  # how far ground-truth slots are blurred towards a detector's uncertainty
    parse_loss_weight: float = 1.0  # the readers' targets (kind, phrases, relation, count; question type)
    parse_texts: int = 64  # texts and questions a step drawn from the whole grammar, read for their targets alone
    parse_splice: float = 0.5  # share of those read with their words' contexts taken from a one-word variant
    answer_loss_weight: float = 1.0  # the answers' words, written by the core after the slot evidence
    audio_loss_weight: float = 1.0
    # What the speech stage adds to its probe: what it needs to refuse wordless clips and to search by sound
    # (augment and grouped slowed its learning at equal first weights: BENCHMARKS.md, "Voice search").
    speech_extras: tuple[str, ...] = ("wordless", "align")
    speech_validation: str | None = None  # a spoken test split, scored (word error rate) every validate_every steps
    validate_every: int = 100  # steps between validations and lines of the run's curve.jsonl
    mine_every: int = 200  # steps between refreshes of model-mined hard negatives (reading stages)
    mined_per_batch: int = 16  # images from the mined bank added to each batch
    checkpoint_every: int = 250
    final_dtype: str = "float16"  # the finished model's stored weights (checkpoints keep float32 to resume exactly)
    log_every: int = 25
    device: str = "auto"  # "auto", "cpu" or "cuda"
    workers: int = 2  # threads for the CPU

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}; choose from {', '.join(RECIPES)}")
        if self.final_dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"final_dtype must be float32, float16 or bfloat16, got {self.final_dtype!r}")
        if self.init_from and self.recipe == "shapes":
            raise ValueError("the shapes recipe trains from nothing; --init-from goes with --recipe language or speech")
        if self.batch_size is not None and self.batch_size < 2:
            raise ValueError("batch_size must be at least 2")
        self.speech_extras = tuple(self.speech_extras)
        unknown = set(self.speech_extras) - set(SPEECH_EXTRAS)
        if unknown:
            raise ValueError(f"unknown speech extras {sorted(unknown)}; choose from {', '.join(SPEECH_EXTRAS)}")
        if self.validate_every < 1:
            raise ValueError("validate_every must be at least 1")
        counts = {"perception_steps", "reading_steps", "joint_steps", "speech_steps"}
        if any(getattr(self, name) < 0 for name in counts):
            raise ValueError(f"{', '.join(sorted(counts))} must not be negative")

    def save(self, path: str | Path) -> None:
        from mmodal.indexes.atomic import write_json

        write_json(path, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{path}: unknown training setting(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)
