"""The training configuration, saved beside every checkpoint."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

RECIPES = ("slots", "language", "answers", "speech", "full", "clip", "vqa")
# Settings whose default depends on the recipe (None in the dataclass): the slots recipe trains small modules
# on small pictures, so it takes smaller batches at a higher rate.
RECIPE_DEFAULTS = {
    "slots": {"batch_size": 64, "lr": 1.5e-3},
    "answers": {"batch_size": 64, "lr": 1e-3},
    "language": {"batch_size": 64, "lr": 1e-3},
    "speech": {"batch_size": 32, "lr": 1e-3},
    None: {"batch_size": 128, "lr": 5e-4},
}


@dataclass
class TrainConfig:
    """How to train: data, schedule, objectives and checkpoints."""

    out: str = "runs/shapes"  # run folder: checkpoints and the final model
    data: str = "data/shapes-train"  # training dataset folder (generated when missing)
    n_images: int = 12000  # images to generate when the dataset folder is missing
    speech: bool = True  # train the audio tower on spoken queries
    seed: int = 0
    # "slots": object slots, the slot reasoner and the slot-pooled embedding over the frozen towers of
    # init_from (the shipped model by default); "answers": answers from the slots of init_from (a model with
    # slots, the shipped one by default), everything else frozen; "full": the towers themselves, with
    # multi-positive texts,
    # mined and foil negatives, speech and answers; "clip": plain InfoNCE; "vqa": answers only, on the
    # questions of --data or of VQAv2 files (vqa_questions/annotations/images); "speech": an audio tower that
    # transcribes, over init_from, on the spoken train splits in data; "language": a fresh tokenizer, language
    # core, readers and answers over the slots of init_from, reading texts as people word them
    recipe: str = "slots"
    model: str = "default"  # "default", "tiny" (tests) or "dense" (the default with a dense language core)
    blind: bool = False  # recipes "vqa" and "answers": answer from the question alone (no image), a baseline
    fresh_core: bool = False  # recipe "answers": train a fresh language core of --model's kind along, a baseline
    steps: int = 1200
    batch_size: int | None = None  # 64 for the slots recipe, else 128
    audio_batch_size: int = 32
    lr: float | None = None  # peak learning rate: 1.5e-3 for the slots recipe, else 5e-4
    weight_decay: float = 0.05
    warmup_steps: int = 200
    keep_slots: bool = False  # recipe "slots": go on training init_from's slot modules instead of fresh ones
    perception_steps: int = 3600  # recipe "slots": detector and crop classifier
    reasoner_steps: int = 1000  # recipe "slots": reasoner and pooler on noisy ground-truth slots
    joint_steps: int = 600  # recipe "slots": reasoner and pooler on the detector's own slots
    answer_steps: int = 1500  # recipe "answers": the answer reasoner on noisy ground-truth slots
    answer_joint_steps: int = 300  # recipe "answers": the same on the detector's own slots
    language_steps: int = 2000  # recipe "language": reading and answers on noisy ground-truth slots
    language_joint_steps: int = 300  # recipe "language": the same on the detector's own slots
    worded_share: float = 0.7  # recipe "language": share of texts worded as people type them (else the grammar's)
    speech_steps: int = 8000  # recipe "speech": the audio tower's words and embedding
    speech_parts: int = 6  # recipe "speech": spoken train splits of 2,000 queries to generate when data is missing
    slot_noise: float = 1.0  # how far ground-truth slots are blurred towards a detector's uncertainty
    parse_loss_weight: float = 1.0  # the query reader's parse targets (kind, phrases, relation, count)
    parse_texts: int = (
        64  # texts (recipe "answers": questions) a step drawn from the whole grammar, read for their targets alone
    )
    parse_splice: float = 0.5  # share of those texts read with their words' contexts taken from a one-word variant
    audio_loss_weight: float = 1.0
    vqa_loss_weight: float = 1.0  # prefix language modelling of answers to the spec's questions
    vqa_per_step: int = 64  # question–answer pairs per step (one per image, asked of the image as seen)
    vqa_questions: str | None = None  # VQAv2 questions JSON (recipes "vqa" and "answers")
    vqa_annotations: str | None = None  # VQAv2 annotations JSON
    vqa_images: str | None = None  # folder of the VQAv2 images
    init_from: str | None = None  # start from this model folder's weights (modules it lacks start fresh)
    foil_loss_weight: float = 0.5  # foils as extra text negatives in the image→text direction
    mine_every: int = 200  # steps between refreshes of model-mined hard negatives
    mined_per_batch: int = 16  # images from the mined bank added to each batch
    checkpoint_every: int = 250
    final_dtype: str = "float16"  # the finished model's stored weights (checkpoints keep float32 to resume exactly)
    log_every: int = 25
    device: str = "auto"  # "auto", "cpu" or "cuda"
    workers: int = 2  # threads for the CPU

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}; choose from {', '.join(RECIPES)}")
        defaults = RECIPE_DEFAULTS.get(self.recipe, RECIPE_DEFAULTS[None])
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.final_dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"final_dtype must be float32, float16 or bfloat16, got {self.final_dtype!r}")
        only = {
            "blind": ("vqa", "answers"),
            "fresh_core": ("answers",),
            "keep_slots": ("slots",),
            "vqa_questions": ("vqa", "answers"),
            "vqa_annotations": ("vqa", "answers"),
            "vqa_images": ("vqa", "answers"),
        }
        for name, recipes in only.items():
            if getattr(self, name) and self.recipe not in recipes:
                raise ValueError(f"{name} goes with the {' or '.join(recipes)} recipe, not {self.recipe!r}")
        if self.recipe == "slots":
            self.steps = self.perception_steps + self.reasoner_steps + self.joint_steps
        if self.recipe == "answers":
            self.steps = self.answer_steps + self.answer_joint_steps
        if self.recipe == "speech":
            self.steps = self.speech_steps
        if self.recipe == "language":
            self.steps = self.language_steps + self.language_joint_steps
        if self.steps < 1 or self.batch_size < 2:
            raise ValueError("steps must be at least 1 and batch_size at least 2")

    def save(self, path: str | Path) -> None:
        from indexes.atomic import write_json

        write_json(path, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{path}: unknown training setting(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)
