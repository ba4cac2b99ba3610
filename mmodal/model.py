"""The multimodal model: image, text and audio towers, adapters into one space, and early fusion.

A checkpoint is a folder: ``config.json``, ``model.safetensors`` and the tokenizer files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_model, save_model
from torch import nn
from transformers import PreTrainedTokenizerFast

from encoders.audio import AudioEncoder, preprocess_audio
from encoders.errors import TowerInputError
from encoders.image import SwinImageEncoder, preprocess_image
from encoders.language import MoEConfig, MoELanguageModel
from fusion.adapters import Adapter
from fusion.early import EarlyFusion, MatchingHead
from mmodal.config import ModelConfig
from mmodal.fileio import default_file_mode
from mmodal.shapes.semantics import COLORS, SHAPES, SIZES

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
EMBEDDED_MODELS = Path(__file__).parent / "models"  # models shipped inside the package, by name
DEFAULT_MODEL = "shapes"
MAX_TEXT_CHARS = 1000
# Per-patch targets: each attribute plus "no object centred here".
PATCH_CLASSES = {"color": len(COLORS) + 1, "shape": len(SHAPES) + 1, "size": len(SIZES) + 1}


class MModalModel(nn.Module):
    """Search and matching over images, texts and speech in one shared, L2-normalised space."""

    def __init__(self, config: ModelConfig, tokenizer: PreTrainedTokenizerFast):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.source: str | None = None  # the folder or embedded name it was loaded from
        t = config.text
        self.language = MoELanguageModel(
            MoEConfig(
                vocab_size=len(tokenizer),
                hidden_size=t.hidden_size,
                num_layers=t.num_layers,
                num_heads=t.num_heads,
                n_shared_experts=t.n_shared_experts,
                n_routed_experts=t.n_routed_experts,
                experts_per_token=t.experts_per_token,
                expert_hidden_size=t.expert_hidden_size,
                max_position_embeddings=t.max_position_embeddings,
                aux_loss_coef=t.aux_loss_coef,
                pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        )
        self.image_tower = SwinImageEncoder(config.image)
        self.audio_tower = AudioEncoder(config.audio)
        d = config.fusion.embed_dim
        self.image_adapter = Adapter(config.image.out_dim, d)
        self.text_adapter = Adapter(t.hidden_size, d)
        self.audio_adapter = Adapter(config.audio.width, d)
        self.logit_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))
        self.early_fusion = EarlyFusion(config.fusion, config.image.out_dim, t.hidden_size, config.image.grid**2)
        self.matching_head = MatchingHead(config.fusion)
        self.patch_heads = nn.ModuleDict({k: nn.Linear(config.image.out_dim, n) for k, n in PATCH_CLASSES.items()})

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    # ------------------------------------------------------------------------------------------- inputs

    def preprocess_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images of any size → (B, 3, S, S) pixels on the model's device."""
        if len(images) == 0:
            raise TowerInputError("no images to encode")
        pixels = torch.stack([preprocess_image(im, self.config.image.image_size) for im in images])
        return pixels.to(self.device)

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts → (ids, mask), each (B, T); refuses empty and enormous texts."""
        if isinstance(texts, str):
            raise TowerInputError("pass a list of texts, not a single string")
        if len(texts) == 0:
            raise TowerInputError("no texts to encode")
        for text in texts:
            if not isinstance(text, str) or not text.strip():
                raise TowerInputError("empty text: type a few words to search or ask")
            if len(text) > MAX_TEXT_CHARS:
                raise TowerInputError(f"text of {len(text)} characters is too long; keep it under {MAX_TEXT_CHARS}")
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.config.text.max_text_tokens, return_tensors="pt"
        )
        return batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)

    def preprocess_audio(
        self, clips: Sequence[tuple[np.ndarray | torch.Tensor, int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(waveform, sample_rate) pairs → zero-padded 16 kHz (B, T) and lengths (B,)."""
        if len(clips) == 0:
            raise TowerInputError("no audio to encode")
        waves = [preprocess_audio(w, sr, self.config.audio.max_seconds) for w, sr in clips]
        lengths = torch.tensor([w.numel() for w in waves])
        batch = torch.zeros(len(waves), int(lengths.max()))
        for i, w in enumerate(waves):
            batch[i, : w.numel()] = w
        return batch.to(self.device), lengths.to(self.device)

    # ------------------------------------------------------------------------------------------ towers

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) → patch tokens (B, N, C)."""
        return self.image_tower(pixels)

    def text_tokens(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) ids → contextual tokens (B, T, H) from the MoE core run as an encoder, and its load-balance loss."""
        out = self.language(input_ids=ids, attention_mask=mask, causal=False)
        return out.hidden_states, out.aux_loss

    def embed_image_tokens(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.image_adapter(tokens, normalize=normalize)

    def embed_text_tokens(self, tokens: torch.Tensor, mask: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.text_adapter(tokens, mask, normalize=normalize)

    def embed_audio(self, waves: torch.Tensor, lengths: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        tokens, mask = self.audio_tower(waves, lengths)
        return self.audio_adapter(tokens, mask, normalize=normalize)

    def match_tokens(
        self,
        image_tokens: torch.Tensor,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
        late_image: torch.Tensor,
        late_text: torch.Tensor,
    ) -> torch.Tensor:
        """Early-fusion match logits for aligned (image, text) rows: (B,)."""
        fused_text, fused_image = self.early_fusion(image_tokens, text_tokens, text_mask)
        return self.matching_head(fused_text, text_mask, fused_image, late_image, late_text)

    # --------------------------------------------------------------------------------------- public API

    @torch.inference_mode()
    def encode_image(self, images: Sequence[Image.Image] | torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Images (PIL, or preprocessed pixels) → (B, D) embeddings."""
        pixels = images.to(self.device) if torch.is_tensor(images) else self.preprocess_images(images)
        return self.embed_image_tokens(self.image_tokens(pixels), normalize=normalize)

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        """Texts → (B, D) embeddings."""
        ids, mask = self.tokenize(texts)
        tokens, _ = self.text_tokens(ids, mask)
        return self.embed_text_tokens(tokens, mask, normalize=normalize)

    @torch.inference_mode()
    def encode_audio(
        self, clips: Sequence[tuple[np.ndarray | torch.Tensor, int]], normalize: bool = True
    ) -> torch.Tensor:
        """(waveform, sample_rate) pairs → (B, D) embeddings."""
        waves, lengths = self.preprocess_audio(clips)
        return self.embed_audio(waves, lengths, normalize=normalize)

    @torch.inference_mode()
    def match(self, images: Sequence[Image.Image] | torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """Early-fusion match probability of each (image, text) pair, aligned by position: (B,)."""
        pixels = images.to(self.device) if torch.is_tensor(images) else self.preprocess_images(images)
        if len(pixels) != len(texts):
            raise TowerInputError(f"match() pairs images with texts: got {len(pixels)} images and {len(texts)} texts")
        ids, mask = self.tokenize(texts)
        image_tokens = self.image_tokens(pixels)
        text_tokens, _ = self.text_tokens(ids, mask)
        late_image = self.embed_image_tokens(image_tokens)
        late_text = self.embed_text_tokens(text_tokens, mask)
        return torch.sigmoid(self.match_tokens(image_tokens, text_tokens, mask, late_image, late_text))

    # ------------------------------------------------------------------------------------- checkpoints

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Writes config.json, model.safetensors and the tokenizer files; the weights land atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.save(folder)
        self.tokenizer.save_pretrained(folder)
        tmp = folder / f".{WEIGHTS_FILE}.partial"
        save_model(self, str(tmp))
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, folder / WEIGHTS_FILE)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str | torch.device = "cpu") -> MModalModel:
        """Loads a model folder, or a model shipped with mmodal by name ("shapes"), strictly."""
        source = str(folder)
        folder = resolve_model_path(folder)
        weights = folder / WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} is missing: is {folder} an mmodal model folder?")
        config = ModelConfig.load(folder)
        tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
        model = cls(config, tokenizer)
        missing, unexpected = load_model(model, str(weights), strict=False, device=str(device))
        if missing or unexpected:
            raise ValueError(
                f"{weights} does not fit its config: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
        model.source = source if folder.parent == EMBEDDED_MODELS else str(folder.resolve())
        return model.to(device).eval()


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    """A model folder: the path itself when it exists, else the embedded model of that name."""
    path = Path(name_or_path)
    if path.exists() or len(path.parts) != 1:
        return path
    embedded = EMBEDDED_MODELS / path.name
    if embedded.is_dir():
        return embedded
    shipped = sorted(p.name for p in EMBEDDED_MODELS.iterdir() if p.is_dir()) if EMBEDDED_MODELS.is_dir() else []
    raise FileNotFoundError(f"no model folder {path} and no embedded model of that name; embedded models: {shipped}")
