"""Model configuration: one dataclass holding each tower's and the fusion's config, saved as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from mmodal.encoders.audio import AudioEncoderConfig
from mmodal.encoders.language import TextConfig
from mmodal.encoders.slots import SlotConfig
from mmodal.fusion.answers import AnswerConfig
from mmodal.fusion.reasoner import ReasonerConfig
from mmodal.shapes.scene import COLORS, RELATIONS, SHAPES, SIZES
from mmodal.shapes.semantics import QUESTION_TYPES

CONFIG_FILE = "config.json"
ATTRIBUTES = {"color": tuple(COLORS), "shape": tuple(SHAPES), "size": tuple(SIZES)}
# What each question type looks at beyond its subject: the pair of a relation, the related object of a query.
ANSWER_FOCUS = {"relation": "pair", "query": "related"}
# Parts of the first design, which read images as patches; a model folder saved with them still loads, without them.
RETIRED_FIELDS = ("image", "fusion")
# Weights a model folder may hold that the model no longer has: the first design's parts, the contrastive
# temperature (which training keeps to itself) and the detector backbone's final norm (which the heads never read).
RETIRED_MODULES = (
    "image_tower.",
    "image_adapter.",
    "early_fusion.",
    "answer_prefix.",
    "logit_scale",
    "slot_encoder.detector.backbone.norm.",
)


def _slots() -> SlotConfig:
    return SlotConfig(attributes=dict(ATTRIBUTES))


def _reasoner() -> ReasonerConfig:
    return ReasonerConfig(attributes=dict(ATTRIBUTES), relations=tuple(RELATIONS))


def _answers() -> AnswerConfig:
    return AnswerConfig(question_types=tuple(QUESTION_TYPES), focus=dict(ANSWER_FOCUS))


@dataclass
class ModelConfig:
    """Everything needed to rebuild an :class:`mmodal.model.MModalModel` before loading its weights: the language
    core, the audio tower, the object slots, the slot reasoner and the answer reasoner, for the Shapes world's
    attributes and relations by default."""

    name: str = "shapes"
    embed_dim: int = 128  # the shared space that late fusion (FAISS) searches
    text: TextConfig = field(default_factory=TextConfig)
    audio: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    slots: SlotConfig = field(default_factory=_slots)
    reasoner: ReasonerConfig = field(default_factory=_reasoner)
    answers: AnswerConfig = field(default_factory=_answers)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Builds a config from its JSON form, rejecting unknown fields with a clear message; a config saved
        with the first design's patch parts loads without them."""
        data = dict(data)
        if any(key in data for key in RETIRED_FIELDS):
            if data.get("slots") is None or data.get("answers") is None:
                raise ValueError(
                    "this model reads images as patches (mmodal's first design), which mmodal no longer runs; "
                    "train a model with `mmodal train` or use the shipped one (--model shapes)"
                )
            data.setdefault("embed_dim", data.get("fusion", {}).get("embed_dim", cls.embed_dim))
            for key in RETIRED_FIELDS:
                data.pop(key, None)
        parts = {
            "text": TextConfig,
            "audio": AudioEncoderConfig,
            "slots": SlotConfig,
            "reasoner": ReasonerConfig,
            "answers": AnswerConfig,
        }
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(
                f"unknown model config field(s) {sorted(unknown)}; expected {[f.name for f in fields(cls)]}"
            )
        kwargs: dict[str, Any] = {key: data[key] for key in ("name", "embed_dim") if key in data}
        for key, part in parts.items():
            if key not in data:
                continue
            values = dict(data[key])
            allowed = {f.name for f in fields(part)}
            if set(values) - allowed:
                raise ValueError(
                    f"unknown {key} config field(s) {sorted(set(values) - allowed)}; expected {sorted(allowed)}"
                )
            kwargs[key] = part(**{k: _tuples(v) for k, v in values.items()})
        return cls(**kwargs)

    def save(self, folder: str | Path) -> None:
        from mmodal.indexes.atomic import write_json

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


def tiny_config() -> ModelConfig:
    """A tiny model for tests: every part at its smallest sensible size."""
    base = ModelConfig()
    return ModelConfig(
        name="tiny",
        embed_dim=32,
        text=TextConfig(
            vocab_size=300,
            hidden_size=32,
            num_layers=1,
            num_heads=2,
            expert_hidden_size=32,
            max_position_embeddings=64,
            max_text_tokens=24,
        ),
        audio=AudioEncoderConfig(n_mels=32, width=32, num_layers=1, num_heads=2, max_seconds=4.0),
        slots=replace(
            base.slots,
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
        ),
        reasoner=replace(base.reasoner, width=32, num_layers=1, num_heads=2),
        answers=replace(base.answers, width=32, num_layers=1, num_heads=2, hidden=64, prefix_tokens=2),
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
