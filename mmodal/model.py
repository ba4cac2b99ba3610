"""The multimodal model: object slots from pictures, the language core for texts, the audio tower for speech,
adapters into one shared space (late fusion), the slot reasoner that re-ranks and the answer reasoner (early fusion).

A checkpoint is a folder: ``config.json``, ``model.safetensors`` and the tokenizer files.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn
from transformers import PreTrainedTokenizerFast

from mmodal.answering import Answer, AnswerWriter, EvidenceScores, doubted, looked_at
from mmodal.config import RETIRED_MODULES, ModelConfig
from mmodal.encoders.audio import AudioEncoder, preprocess_audio
from mmodal.encoders.errors import TowerInputError
from mmodal.encoders.language import MoEConfig, MoELanguageModel
from mmodal.encoders.normalize import normalize_pixels
from mmodal.encoders.pixels import letterboxed_batch
from mmodal.encoders.slots import SlotEncoder
from mmodal.encoders.tokenizer import WORD
from mmodal.encoders.transcribe import Transcript, WordDecoder
from mmodal.fusion.adapters import Adapter, SlotPooler
from mmodal.fusion.answers import AnswerReasoner
from mmodal.fusion.reasoner import Decision, Parse, SlotReasoner
from mmodal.indexes.atomic import default_file_mode, replace_file
from mmodal.retrieval import RetrievalModel, checked_texts

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
EMBEDDED_MODELS = Path(__file__).parent / "models"  # models shipped inside the package, by name
DEFAULT_MODEL = "shapes"


class MModalModel(nn.Module, RetrievalModel):
    """Search and matching over images, texts and speech in one shared, L2-normalised space."""

    def __init__(self, config: ModelConfig, tokenizer: PreTrainedTokenizerFast):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.source: str | None = None  # the folder or embedded name it was loaded from
        self._word_decoder: WordDecoder | None = None  # built on the first transcription
        t = config.text
        self.language = MoELanguageModel(
            MoEConfig.from_sizes(
                t,
                len(tokenizer),
                pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        )
        self.audio_tower = AudioEncoder(config.audio)
        d = config.embed_dim
        self.text_adapter = Adapter(t.hidden_size, d)
        self.audio_adapter = Adapter(config.audio.width, d)
        self.slot_encoder = SlotEncoder(config.slots)
        self.slot_pooler = SlotPooler(self.slot_encoder.layout.width, d)
        self.reasoner = SlotReasoner(config.reasoner, t.hidden_size)
        self.answerer = AnswerReasoner(config.answers, config.reasoner, t.hidden_size, t.hidden_size, len(tokenizer))

    @property
    def model_name(self) -> str:
        return self.config.name

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    has_slots = True  # images become object slots: the late embedding is pooled from them, the reasoner re-ranks
    identity_leaves_out = ("audio_tower.", "audio_adapter.")  # voice lands on the text space, which it never moves

    @property
    def input_size(self) -> int:
        """Side of the letterboxed square that ``encode_image`` reads."""
        return self.config.slots.source_size

    @property
    def slot_dim(self) -> int:
        """Width of one slot row."""
        return self.slot_encoder.layout.width

    @property
    def device(self) -> torch.device:
        return self.text_adapter.project.weight.device

    # ------------------------------------------------------------------------------------------- inputs

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts → (ids, mask), each (B, T); refuses empty and enormous texts."""
        batch = self.tokenizer(
            checked_texts(texts),
            padding=True,
            truncation=True,
            max_length=self.config.text.max_text_tokens,
            return_tensors="pt",
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

    def text_tokens(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) ids → contextual tokens (B, T, H) from the MoE core run as an encoder, and its load-balance loss."""
        out = self.language(input_ids=ids, attention_mask=mask, causal=False)
        return out.hidden_states, out.aux_loss

    def embed_text_tokens(self, tokens: torch.Tensor, mask: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.text_adapter(tokens, mask, normalize=normalize)

    def embed_audio(self, waves: torch.Tensor, lengths: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        tokens, mask = self.audio_tower(waves, lengths)
        return self.audio_adapter(tokens, mask, normalize=normalize)

    # --------------------------------------------------------------------------------------- public API

    def letterboxed(self, images: Sequence[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """PIL images → pixels (B, 3, S, S) at ``input_size`` and each picture's frame in its square (B, 4)."""
        try:
            arrays, frames = letterboxed_batch(images, self.input_size)
        except (TypeError, ValueError) as error:
            raise TowerInputError(str(error)) from None
        return normalize_pixels(torch.from_numpy(arrays)).to(self.device), torch.from_numpy(frames).to(self.device)

    def image_slots(self, pixels: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, S, S) pixels at ``input_size`` → object slots (B, N, slot_dim); frames default to full squares."""
        if frames is None:
            frames = torch.tensor([[0.0, 0.0, 1.0, 1.0]], device=pixels.device).expand(len(pixels), -1)
        return self.slot_encoder(pixels, frames)

    @torch.inference_mode()
    def encode_image_slots(
        self,
        images: Sequence[Image.Image] | torch.Tensor,
        frames: torch.Tensor | None = None,
        normalize: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images → (B, D) embeddings and (B, N, slot_dim) object slots.

        PIL images carry their own frame; preprocessed pixels take ``frames`` (B, 4) from
        ``mmodal.encoders.pixels.letterbox_frame``, or are taken as filling their square.
        """
        if torch.is_tensor(images):
            pixels = images.to(self.device)
        else:
            pixels, frames = self.letterboxed(images)
        slots = self.image_slots(pixels, frames)
        return self.slot_pooler(slots, normalize=normalize), slots

    def encode_pixels(self, pixels: torch.Tensor, frames: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        vectors, slots = self.encode_image_slots(normalize_pixels(pixels), frames.to(self.device))
        return vectors.float().cpu().numpy(), slots.float().cpu().numpy()

    def encode_image(
        self,
        images: Sequence[Image.Image] | torch.Tensor,
        frames: torch.Tensor | None = None,
        normalize: bool = True,
    ) -> torch.Tensor:
        """Images (PIL, or pixels at ``input_size``) → (B, D) embeddings."""
        return self.encode_image_slots(images, frames, normalize=normalize)[0]

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

    @property
    def transcribes(self) -> bool:
        """Whether the audio tower hears words (a CTC head), so spoken queries can take the text path."""
        return self.audio_tower.transcribes

    @torch.inference_mode()
    def transcribe(self, clips: Sequence[tuple[np.ndarray | torch.Tensor, int]]) -> list[Transcript]:
        """(waveform, sample_rate) pairs → what each says, in the audio tower's vocabulary, with confidences."""
        if not self.transcribes:
            return super().transcribe(clips)
        waves, lengths = self.preprocess_audio(clips)
        tokens, mask = self.audio_tower(waves, lengths)
        if self._word_decoder is None:
            self._word_decoder = WordDecoder(self.config.audio.vocabulary, self.audio_tower.word_bigram)
        return self._word_decoder(self.audio_tower.word_log_probs(tokens), mask.sum(1))

    @torch.inference_mode()
    def read_queries(self, texts: Sequence[str]) -> list[Parse]:
        """Texts → the slot reasoner's reading of each (parts, phrases, relations, counts)."""
        ids, mask = self.tokenize(texts)
        tokens, _ = self.text_tokens(ids, mask)
        return self.reasoner.read(tokens, mask)

    @torch.inference_mode()
    def encode_and_read(self, texts: Sequence[str], normalize: bool = True) -> tuple[torch.Tensor, list[Parse]]:
        """Texts → (B, D) embeddings and the reasoner's readings, from one pass of the language core."""
        ids, mask = self.tokenize(texts)
        tokens, _ = self.text_tokens(ids, mask)
        return self.embed_text_tokens(tokens, mask, normalize=normalize), self.reasoner.read(tokens, mask)

    def slot_boxes(self, slots: torch.Tensor) -> torch.Tensor:
        """Slots (…, slot_dim) → their boxes (…, 3): centre x, centre y and diameter over the picture's width."""
        return slots[..., self.slot_encoder.layout.position]

    @torch.inference_mode()
    def decide(self, parse: Parse, slots: torch.Tensor) -> Decision:
        """One reading against K images' slots (K, N, slot_dim) → probability it holds and the matched slots."""
        if slots.shape[1] == 0:
            slots = slots.new_zeros(len(slots), 1, self.slot_dim)
        return self.reasoner.decide(parse, slots.to(self.device).float())

    @torch.inference_mode()
    def match(self, images: Sequence[Image.Image] | torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """Probability that each text holds of its image, by the slot reasoner, aligned by position: (B,)."""
        if len(images) != len(texts):
            raise TowerInputError(f"match() pairs images with texts: got {len(images)} images and {len(texts)} texts")
        _, slots = self.encode_image_slots(images)
        parses = self.read_queries(texts)
        return torch.cat([self.decide(p, slots[i : i + 1]).probability for i, p in enumerate(parses)])

    def unknown_words(self, text: str) -> list[str]:
        """The words of ``text`` that no text the model was trained on holds (none when it did not record them)."""
        known = self.config.text.known_words
        return [w for w in WORD.findall(text.lower()) if w not in known] if known else []

    @torch.inference_mode()
    def ask(
        self, images: Sequence[Image.Image] | torch.Tensor, questions: Sequence[str], alternatives: int = 3
    ) -> list[Answer]:
        """Answers each question about its image: beam search over the language core after the slot evidence.

        ``confidence`` is the model's probability of the whole answer, times the share of the question's words
        the model knows (with a note naming the others); ``alternatives`` are the next beams; ``looked_at``
        names the objects that counted.
        """
        answers = self._answer(images, questions, alternatives)
        return [doubted(answer, question, self.unknown_words(question)) for answer, question in zip(answers, questions)]

    def _answer(self, images, questions: Sequence[str], alternatives: int) -> list[Answer]:
        if len(images) != len(questions):
            raise TowerInputError(f"ask() pairs images with questions: got {len(images)} and {len(questions)}")
        ids, mask = self.tokenize(questions)
        _, slots = self.encode_image_slots(images)
        prefix, _, evidence = self.answer_prefix(slots, ids, mask)
        prefix_mask = torch.ones(prefix.shape[:2], dtype=mask.dtype, device=self.device)
        looked = looked_at(self.slot_boxes(slots), slots[..., 0] > 0, evidence.looked_at)
        scored = EvidenceScores(self.answerer, evidence.features)
        writer = AnswerWriter(self.language, self.tokenizer, self.answerer)
        return [
            Answer(best, confidence, ranked, looked_at=looked[b])
            for b, (best, confidence, ranked) in enumerate(writer.decode(prefix, prefix_mask, alternatives, scored))
        ]

    def answer_prefix(self, slots: torch.Tensor, question_ids: torch.Tensor, question_mask: torch.Tensor):
        """Object slots (B, N, F) and questions → the core's prefix (B, P, H), the reader's logits, the evidence."""
        tokens, _ = self.text_tokens(question_ids, question_mask)
        return self.answerer(tokens, question_mask, slots, self.reasoner)

    def answer_loss(
        self, prefix: torch.Tensor, features: torch.Tensor, answer_ids: torch.Tensor, answer_mask: torch.Tensor
    ):
        """Cross-entropy of the answers' words, as the core writes them after a slot prefix with the evidence
        ``features`` shifting its scores (the scores beam search uses); and the MoE aux loss."""
        prefix_mask = torch.ones(prefix.shape[:2], dtype=answer_mask.dtype, device=prefix.device)
        out = self.language(
            input_ids=answer_ids, attention_mask=answer_mask, prefix_embeds=prefix, prefix_mask=prefix_mask, causal=True
        )
        scores = self.answerer.answer_scores(out.logits[:, :-1], features, 0)  # position t writes word t + 1
        labels = answer_ids.masked_fill(answer_mask == 0, -100)[:, 1:]
        loss = torch.nn.functional.nll_loss(scores.reshape(-1, scores.shape[-1]), labels.reshape(-1))
        return loss, out.aux_loss

    # ------------------------------------------------------------------------------------- checkpoints

    def save_pretrained(self, folder: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
        """Writes config.json, model.safetensors and the tokenizer files; the weights land atomically.

        ``dtype`` (e.g. torch.float16) stores the weights smaller; loading casts them back to the model's dtype.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.save(folder)
        self.tokenizer.save_pretrained(folder)
        tmp = folder / f".{WEIGHTS_FILE}.partial"
        save_model(self if dtype is None else copy.deepcopy(self).to(dtype), str(tmp))
        os.chmod(tmp, default_file_mode())
        replace_file(tmp, folder / WEIGHTS_FILE)

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
        try:
            missing, unexpected = load_model(model, str(weights), strict=False, device=str(device))
        except SafetensorError as error:
            raise ValueError(
                f"{weights} is not a readable safetensors file ({error}); restore the model folder"
            ) from None
        retired = [k for k in unexpected if k.startswith(RETIRED_MODULES)]
        if retired:  # a folder saved with weights the model no longer has (see RETIRED_MODULES)
            log.info("%s holds %d tensors of retired modules; they are not loaded", weights, len(retired))
            unexpected = [k for k in unexpected if not k.startswith(RETIRED_MODULES)]
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
