"""Model configuration: one dataclass holding each tower's and the fusion's config, saved as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from encoders.audio import AudioEncoderConfig
from encoders.image import ImageEncoderConfig
from encoders.language import TextConfig
from encoders.slots import SlotConfig
from fusion.answers import AnswerConfig
from fusion.early import FusionConfig
from fusion.reasoner import ReasonerConfig

CONFIG_FILE = "config.json"


@dataclass
class ModelConfig:
    """Everything needed to rebuild an :class:`mmodal.model.MModalModel` before loading its weights."""

    name: str = "shapes"
    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    text: TextConfig = field(default_factory=TextConfig)
    audio: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    slots: SlotConfig | None = None  # object slots (detector, crop classifier) for late and early fusion
    reasoner: ReasonerConfig | None = None  # the slot reasoner that re-ranks; set together with ``slots``
    answers: AnswerConfig | None = None  # answers from the slots (else from the first design's patch fusion)

    def __post_init__(self) -> None:
        if (self.slots is None) != (self.reasoner is None):
            raise ValueError("a model config sets slots and reasoner together, or neither")
        if self.answers is not None and self.slots is None:
            raise ValueError("answers from slots need a model with slots")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Builds a config from its JSON form, rejecting unknown fields with a clear message."""
        parts = {
            "image": ImageEncoderConfig,
            "text": TextConfig,
            "audio": AudioEncoderConfig,
            "fusion": FusionConfig,
            "slots": SlotConfig,
            "reasoner": ReasonerConfig,
            "answers": AnswerConfig,
        }
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(
                f"unknown model config field(s) {sorted(unknown)}; expected {[f.name for f in fields(cls)]}"
            )
        kwargs: dict[str, Any] = {"name": data.get("name", "shapes")}
        for key, part in parts.items():
            if key in ("slots", "reasoner", "answers") and data.get(key) is None:
                continue
            values = dict(data.get(key, {}))
            allowed = {f.name for f in fields(part)}
            if set(values) - allowed:
                raise ValueError(
                    f"unknown {key} config field(s) {sorted(set(values) - allowed)}; expected {sorted(allowed)}"
                )
            kwargs[key] = part(**{k: _tuples(v) for k, v in values.items()})
        return cls(**kwargs)

    def save(self, folder: str | Path) -> None:
        from indexes.atomic import write_json

        write_json(Path(folder) / CONFIG_FILE, self.to_dict())

    @classmethod
    def load(cls, folder: str | Path) -> ModelConfig:
        path = Path(folder) / CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: a model folder holds {CONFIG_FILE} and model.safetensors")
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples the configs hold, inside dicts too."""
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def with_slots(config: ModelConfig, attributes: dict[str, tuple[str, ...]], relations: tuple[str, ...]) -> ModelConfig:
    """``config`` with object slots and the slot reasoner for a world of these attributes and relations."""
    slots = SlotConfig(attributes=dict(attributes))
    reasoner = ReasonerConfig(attributes=dict(attributes), relations=tuple(relations))
    if config.name == "tiny":
        slots = replace(
            slots,
            source_size=32,
            patch_size=4,
            embed_dim=16,
            depths=(1, 1),
            num_heads=(1, 2),
            crop_size=16,
            crop_embed_dim=16,
            crop_depths=(1, 1),
            crop_num_heads=(1, 2),
            max_slots=4,
        )
        reasoner = replace(reasoner, width=32, num_layers=1, num_heads=2)
    return replace(config, slots=slots, reasoner=reasoner)


def tiny_config() -> ModelConfig:
    """A tiny model for tests: every part at its smallest sensible size."""
    return ModelConfig(
        name="tiny",
        image=ImageEncoderConfig(
            image_size=32, patch_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=4
        ),
        text=TextConfig(
            vocab_size=300,
            hidden_size=32,
            num_layers=1,
            num_heads=2,
            expert_hidden_size=32,
            max_position_embeddings=64,  # 16 image + 24 question + answer tokens
            max_text_tokens=24,
        ),
        audio=AudioEncoderConfig(n_mels=32, width=32, num_layers=1, num_heads=2, max_seconds=4.0),
        fusion=FusionConfig(embed_dim=32, width=32, num_layers=1, num_heads=2),
    )


def dense_text(moe: TextConfig) -> TextConfig:
    """A dense language core of ``moe``'s active width: each feed-forward layer is the shared expert widened by
    the routed experts a token would visit, with no router (a baseline for the MoE)."""
    return replace(
        moe, n_shared_experts=moe.n_shared_experts + moe.experts_per_token, n_routed_experts=0, experts_per_token=0
    )


def dense_config() -> ModelConfig:
    """The default model with a dense language core of the same active width."""
    return ModelConfig(name="shapes-dense", text=dense_text(TextConfig()))


def with_answers(config: ModelConfig, question_types: tuple[str, ...], focus: dict[str, str]) -> ModelConfig:
    """``config`` (which has slots) answering questions of these types from its slots."""
    answers = AnswerConfig(question_types=tuple(question_types), focus=dict(focus))
    if config.name == "tiny":
        answers = replace(answers, width=32, num_layers=1, num_heads=2, hidden=64, prefix_tokens=2)
    return replace(config, answers=answers)
