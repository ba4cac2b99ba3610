"""Models on pretrained weights, for real photos: ConSE models (an ImageNet classifier bridged to a sentence
encoder, like the embedded ``photos`` model) and CLIP or SigLIP folders loaded through transformers.

Each implements :class:`mmodal.retrieval.Model`, so indexing, search and the web app use them as they
use the Shapes model. None of them has object slots: they rank by embedding alone, and answer only what they
can ("what is in this picture?" from a classifier's top classes).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerFast

from mmodal.encoders.errors import TowerInputError
from mmodal.encoders.imagenet import TF_INPUT_MEAN, TF_INPUT_STD, create_classifier
from mmodal.encoders.normalize import normalize_pixels
from mmodal.encoders.pixels import letterboxed_batch
from mmodal.encoders.sentence import SentenceEncoder
from mmodal.fusion.conse import CLASS_PROMPTS, ConSEBridge, class_texts
from mmodal.indexes.atomic import replace_folder
from mmodal.retrieval import RetrievalModel, UnsupportedQueryError, checked_texts

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CONSE_KIND = "conse"
# What a ConSE model says when asked anything but what a picture shows.
CLASSIFIER_ONLY = (
    "the {name} model only recognises what a photo shows (its top ImageNet classes, with their probabilities); "
    "it cannot answer other questions. Ask Shapes questions with the shapes model"
)


@dataclass
class ConSEConfig:
    """An ImageNet-style classifier (timm), a sentence encoder (transformers) and the bridge's settings."""

    name: str = "photos"
    architecture: str = "efficientnet_lite0"
    model_args: dict = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)  # synonyms of each class, comma-separated
    # Tuned on photos from other packages than the test's (BENCHMARKS.md, "Real photos"): 224 px over 192,
    # the five likeliest classes at temperature 2, and queries worded like the class prompts.
    image_size: int = 224
    mean: tuple[float, float, float] = TF_INPUT_MEAN
    std: tuple[float, float, float] = TF_INPUT_STD
    top_k: int = 5
    temperature: float = 2.0
    hubness_weight: float = 0.5  # text searches rank by cosine minus this much of each image's hubness
    prompts: tuple[str, ...] = CLASS_PROMPTS
    query_prompt: str = "a photo of {}."
    text: dict = field(default_factory=dict)  # the sentence encoder's transformers config
    kind: str = CONSE_KIND

    @classmethod
    def from_dict(cls, data: dict) -> ConSEConfig:
        data = dict(data)
        for key in ("mean", "std", "prompts"):
            data[key] = tuple(data[key])
        return cls(**data)


def _letterboxed(images: Sequence[Image.Image], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        pixels, frames = letterboxed_batch(images, size)
    except (TypeError, ValueError) as error:
        raise TowerInputError(str(error)) from None
    return torch.from_numpy(pixels), torch.from_numpy(frames)


class ConSEModel(nn.Module, RetrievalModel):
    """Photos and texts in the sentence encoder's space: images through the classifier and ConSE."""

    def __init__(self, config: ConSEConfig, tokenizer: PreTrainedTokenizerFast):
        super().__init__()
        self.config = config
        self.classifier = create_classifier(config.architecture, len(config.class_names), config.model_args)
        self.text = SentenceEncoder(config.text, tokenizer)
        self.bridge = ConSEBridge(len(config.class_names), self.text.width, config.top_k, config.temperature)
        self.source = None
        # The frozen CPU graph of the classifier, built on first use; held in a dict so that it is not registered
        # as a submodule (it would enter the state dict, the weights hash and saved folders).
        self._frozen: dict[str, torch.jit.ScriptModule] = {}

    @property
    def model_name(self) -> str:
        return self.config.name

    @property
    def embed_dim(self) -> int:
        return self.text.width

    @property
    def input_size(self) -> int:
        return self.config.image_size

    @property
    def vector_settings(self) -> bytes:
        settings = {k: v for k, v in asdict(self.config).items() if k not in ("name", "class_names", "text")}
        return json.dumps(settings, sort_keys=True).encode()

    @property
    def device(self) -> torch.device:
        return self.bridge.class_embeddings.device

    def class_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """Letterboxed uint8 pixels (B, 3, S, S) → class logits (B, C)."""
        x = normalize_pixels(pixels.to(self.device), self.config.mean, self.config.std)
        x = x.contiguous(memory_format=torch.channels_last)
        if self.device.type == "cpu" and not self.training:
            # A frozen TorchScript graph folds the batch norms into the convolutions: about 1.5× faster on CPU.
            if "classifier" not in self._frozen:
                with warnings.catch_warnings():  # TorchScript is deprecated in favour of torch.compile, which
                    warnings.simplefilter("ignore", DeprecationWarning)  # compiles for minutes on a first call
                    self._frozen["classifier"] = torch.jit.freeze(torch.jit.trace(self.classifier, x[:1]))
            return self._frozen["classifier"](x)
        return self.classifier(x)

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor, frames: torch.Tensor) -> tuple[np.ndarray, None]:
        return self.bridge(self.class_logits(pixels)).cpu().numpy(), None

    @torch.inference_mode()
    def encode_image(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels, frames = _letterboxed(images, self.input_size)
        return torch.from_numpy(self.encode_pixels(pixels, frames)[0])

    @property
    def rescores_text_hits(self) -> bool:
        return bool(self.config.hubness_weight)

    @torch.inference_mode()
    def rescore_text_hits(self, scores: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        hubness = self.bridge.hubness(torch.from_numpy(vectors).to(self.device)).cpu().numpy()
        return scores - self.config.hubness_weight * hubness

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        return self.text([self.config.query_prompt.format(t.strip()) for t in checked_texts(texts)])

    @torch.inference_mode()
    def top_classes(self, images: Sequence[Image.Image], n: int = 5) -> list[list[tuple[str, float]]]:
        """Each picture's ``n`` likeliest classes (all, when it knows fewer) with their probabilities."""
        pixels, _ = _letterboxed(images, self.input_size)
        logits = self.class_logits(pixels).float()
        probabilities, classes = logits.softmax(-1).topk(min(n, logits.shape[-1]), dim=-1)
        names = [s.split(",")[0].strip() for s in self.config.class_names]
        return [
            [(names[c], float(p)) for p, c in zip(row_p.tolist(), row_c.tolist())]
            for row_p, row_c in zip(probabilities, classes)
        ]

    def ask(self, images: Sequence[Image.Image], questions: Sequence[str], alternatives: int = 3):
        """What each picture shows, from the classifier's top classes, with a note that nothing else is answered."""
        from mmodal.answering import Answer

        if len(images) != len(questions):
            raise TowerInputError(f"ask() pairs images with questions: got {len(images)} and {len(questions)}")
        note = CLASSIFIER_ONLY.format(name=self.config.name)
        return [
            Answer(ranked[0][0], ranked[0][1], ranked[1:], note=note)
            for ranked in self.top_classes(images, alternatives + 1)
        ]

    # ------------------------------------------------------------------------------------- checkpoints

    @torch.inference_mode()
    def embed_classes(self, batch: int = 256) -> None:
        """The bridge's class table: each class's prompts through the sentence encoder, averaged, normalised."""
        texts = [class_texts(names, self.config.prompts) for names in self.config.class_names]
        flat = [t for group in texts for t in group]
        rows = [
            self.text(flat[i : i + batch])
            for i in tqdm(range(0, len(flat), batch), desc="class prompts", unit="batch", leave=False)
        ]
        embedded = torch.cat(rows)
        table, start = [], 0
        for group in texts:
            table.append(embedded[start : start + len(group)].mean(0))
            start += len(group)
        self.bridge.class_embeddings.copy_(nn.functional.normalize(torch.stack(table), dim=-1))

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """config.json, model.safetensors (classifier, sentence encoder, class table) and the tokenizer files,
        written into a fresh folder that takes ``folder``'s place once all of it is on disk."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
        try:
            (partial / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2) + "\n", encoding="utf-8")
            self.text.tokenizer.save_pretrained(partial)
            state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
            save_file(state, str(partial / WEIGHTS_FILE))
            replace_folder(partial, folder)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str | torch.device = "cpu") -> ConSEModel:
        folder = Path(folder)
        config = ConSEConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8")))
        model = cls(config, PreTrainedTokenizerFast.from_pretrained(folder))
        weights = folder / WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} is missing: is {folder} a model folder?")
        missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
        if missing or unexpected:
            raise ValueError(f"{weights} does not fit its config: missing {missing[:3]}, unexpected {unexpected[:3]}")
        model.source = str(folder.resolve())
        return model.to(device).eval()


def build_conse_model(
    classifier: nn.Module,
    config: ConSEConfig,
    text_folder: str | os.PathLike,
) -> ConSEModel:
    """A ConSE model from a classifier with its weights and a sentence encoder folder; embeds the class table."""
    text = SentenceEncoder.from_folder(text_folder)
    config.text = text.model_config
    model = ConSEModel(config, text.tokenizer)
    model.classifier.load_state_dict(classifier.state_dict())
    model.text.load_state_dict(text.state_dict())
    model.eval()
    model.embed_classes()
    return model


class ClipModel(nn.Module, RetrievalModel):
    """A Hugging Face CLIP or SigLIP folder (config.json, weights, tokenizer; preprocessor_config.json read for
    the input size and normalisation) as a dual encoder."""

    def __init__(self, folder: str | os.PathLike, name: str):
        super().__init__()
        folder = Path(folder)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
        kind = self.model.config.model_type
        if kind not in ("clip", "siglip", "siglip2"):
            raise ValueError(f"{folder} holds a {kind!r} model; --model clip: takes a CLIP or SigLIP folder")
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        processor = folder / "preprocessor_config.json"
        settings = json.loads(processor.read_text(encoding="utf-8")) if processor.is_file() else {}
        default = (0.5, 0.5, 0.5) if kind.startswith("siglip") else None
        self.mean = tuple(settings.get("image_mean") or default or (0.48145466, 0.4578275, 0.40821073))
        self.std = tuple(settings.get("image_std") or default or (0.26862954, 0.26130258, 0.27577711))
        self.image_size = int(self.model.config.vision_config.image_size)
        self.text_length = int(self.model.config.text_config.max_position_embeddings)
        self.pad_to_length = kind.startswith("siglip")  # SigLIP was trained on texts padded to full length
        self.name = name

    @property
    def model_name(self) -> str:
        return self.name

    @property
    def embed_dim(self) -> int:
        config = self.model.config
        return int(getattr(config, "projection_dim", None) or config.text_config.hidden_size)

    @property
    def input_size(self) -> int:
        return self.image_size

    @property
    def vector_settings(self) -> bytes:
        return json.dumps([self.image_size, self.mean, self.std, self.text_length, self.pad_to_length]).encode()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @staticmethod
    def _features(output) -> torch.Tensor:
        tensor = output.pooler_output if hasattr(output, "pooler_output") else output
        return nn.functional.normalize(tensor.float(), dim=-1)

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor, frames: torch.Tensor) -> tuple[np.ndarray, None]:
        x = normalize_pixels(pixels.to(self.device), self.mean, self.std)
        return self._features(self.model.get_image_features(pixel_values=x)).cpu().numpy(), None

    @torch.inference_mode()
    def encode_image(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels, frames = _letterboxed(images, self.input_size)
        return torch.from_numpy(self.encode_pixels(pixels, frames)[0])

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        batch = self.tokenizer(
            checked_texts(texts),
            padding="max_length" if self.pad_to_length else True,
            truncation=True,
            max_length=self.text_length,
            return_tensors="pt",
        )
        inputs = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        if self.pad_to_length:
            inputs.pop("attention_mask", None)
        return self._features(self.model.get_text_features(**inputs))

    def ask(self, images, questions, alternatives: int = 3):
        raise UnsupportedQueryError(
            f"model {self.name!r} embeds images and texts for search but does not answer questions; "
            "ask with the shapes model, or ask the photos model what a photo shows"
        )
