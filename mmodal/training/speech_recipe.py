"""The speech stage: an audio tower that hears the words, the last stage from nothing or, as recipe "speech", over a
trained model (the shipped one by default).

A fresh audio tower (``SPEECH_AUDIO`` sizes) learns two things at once from spoken queries:

1. a CTC head over the query words (the vocabulary of the training transcripts, saved in the model's
   config), so that a spoken query becomes its text and takes the text path;
2. its adapter into the shared space, pulled onto the frozen text embedding of its transcript, for audio
   similarity without words.

The stage starts as the probe that first transcribed held-out voices (``benchmarks/probe_ctc.py``): the same
tower, optimiser, schedule, clips and batches. Each extra beyond it is one of ``SPEECH_EXTRAS``, chosen in
``TrainConfig.speech_extras`` and kept only where it measured better (BENCHMARKS.md, "Voice search"):

Clips are varied beyond the recorded voices: speed perturbed (tempo and pitch together, as a longer or
shorter vocal tract), padded with quiet lead-in and tail as recordings have, some heard in a reverberant room or
through a narrow microphone or telephone band, given extra noise, and masked in time and frequency
(SpecAugment). Clips with no query words in them (silence, noise, tones, speech in other
languages) are taught to transcribe as nothing, so that what is not a query gets no confident transcript.
Everything else in the model stays frozen: its index vectors and answers do not change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile
import torch
import torch.nn.functional as F
import torchaudio
from safetensors.torch import load_file
from tqdm import tqdm
from transformers import PreTrainedTokenizerFast

from mmodal.config import ModelConfig
from mmodal.data.dataset import Dataset, read_dataset
from mmodal.encoders.audio import SAMPLE_RATE, AudioEncoder, AudioEncoderConfig, preprocess_audio, resample
from mmodal.encoders.transcribe import count_bigram
from mmodal.kernels.contrastive import contrastive_loss
from mmodal.model import DEFAULT_MODEL, WEIGHTS_FILE, MModalModel, resolve_model_path
from mmodal.shapes.speech import Voice, heard_words, synthesize
from mmodal.training.config import SPEECH_EXTRAS, TrainConfig
from mmodal.training.slot_batches import load_towers

log = logging.getLogger(__name__)

SPEECH_MODULES = ("audio_tower.", "audio_adapter.")
SPEECH_AUDIO = {"width": 192, "num_layers": 4, "num_heads": 4, "block": "conformer"}  # BENCHMARKS.md
SPEEDS = (0.9, 0.95, 1.0, 1.0, 1.05, 1.1)  # tempo factors; ratios of small integers resample quickly
WORDLESS_SHARE = 0.1  # share of each batch that holds no query word
ROOM_SHARE = 0.3  # share of varied clips heard in a reverberant room
MICROPHONE_SHARE = 0.3  # share of varied clips heard through a narrow microphone or telephone band
# Speech in other languages, for clips that must transcribe as nothing: espeak-ng reads numbers in each
# language's own words. The languages heard in testing are left out here (see benchmarks/speech_refusals.py).
WORDLESS_LANGUAGES = ("de", "fr", "es", "it", "nl", "pl", "cs", "hu")
WORDLESS_CLIPS = 400
WORDLESS_MAX_SECONDS = 3.5  # as long as the longer spoken queries
VALIDATION_CLIPS = 300  # clips of the validation split scored every ``validate_every`` steps


def speech_datasets(folder: str | Path) -> list[Dataset]:
    """The spoken train splits at ``folder``: the folder itself, or each dataset folder inside it."""
    folder = Path(folder)
    roots = [folder] if (folder / "dataset.json").is_file() else sorted(p.parent for p in folder.glob("*/dataset.json"))
    datasets = [read_dataset(root) for root in roots]
    spoken = [d for d in datasets if any(q.audio for q in d.queries) and d.info.get("split") == "train"]
    if not spoken:
        raise ValueError(
            f"{folder} holds no train split with speech; make some with "
            "`mmodal data shapes --out FOLDER/part-1 --n 400 --queries 2000 --split train --speech --seed 1`"
        )
    return spoken


def build_speech_model(config: TrainConfig, vocabulary: tuple[str, ...], bigram: torch.Tensor) -> MModalModel:
    """The model of ``init_from`` (the shipped one by default) with a fresh audio tower that transcribes
    ``vocabulary``, with ``bigram`` (see :func:`mmodal.encoders.transcribe.count_bigram`) as its prior."""
    folder = resolve_model_path(config.init_from or DEFAULT_MODEL)
    base = ModelConfig.load(folder)
    audio = speech_audio(base.audio, vocabulary, tiny=config.model == "tiny")
    model = MModalModel(replace(base, audio=audio), PreTrainedTokenizerFast.from_pretrained(folder))
    load_towers(model, load_file(str(folder / WEIGHTS_FILE)), SPEECH_MODULES, str(folder))
    model.audio_tower.load_state_dict(fresh_tower(model.config.audio, config.seed).state_dict())
    model.audio_tower.word_bigram.copy_(bigram)
    return model


def fresh_tower(audio: AudioEncoderConfig, seed: int) -> AudioEncoder:
    """A new audio tower whose first weights come from ``seed`` alone, whatever else the model holds: the same
    draw as the probe's (``benchmarks/probe_ctc.py``), so that the two can be compared step for step."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return AudioEncoder(audio)


def decayed(name: str, parameter: torch.nn.Parameter) -> bool:
    """Whether weight decay applies to a parameter: matrices, not biases, norms or embeddings."""
    return parameter.ndim >= 2 and "embed" not in name


@dataclass(frozen=True)
class SpeechStage:
    """The audio tower's words (CTC) and its embedding onto the frozen text embedding of each transcript."""

    name: str = "speech"
    modules: tuple[str, ...] = SPEECH_MODULES
    batch_size: int = 32
    lr: float = 1e-3
    mines: bool = False
    data_kind: str = "speech"

    def length(self, config: TrainConfig) -> int:
        return config.speech_steps

    def losses(
        self, model, data, size: int, mined, step: int, config: TrainConfig, rng: np.random.Generator, temperature
    ):
        return speech_losses(model, data, size, rng, config, temperature)

    def validate(self, model, config: TrainConfig) -> dict[str, float]:
        if not config.speech_validation:
            return {}
        return {"wer": validation_clips(config.speech_validation).word_error_rate(model.audio_tower)}


def speech_audio(base, vocabulary: tuple[str, ...], tiny: bool = False):
    """``base`` (an audio config) at the size that transcribes (a tiny model keeps its size), hearing
    ``vocabulary``."""
    sizes = {"block": SPEECH_AUDIO["block"]} if tiny else SPEECH_AUDIO
    return replace(base, **sizes, vocabulary=tuple(vocabulary))


class SpeechTrainingData:
    """Spoken queries with their transcripts as word indices, wordless clips, and the frozen text embeddings
    that the audio embedding learns to land on."""

    def __init__(self, datasets: list[Dataset], seed: int, wordless_clips: int = WORDLESS_CLIPS):
        self.clips: list[np.ndarray] = []
        self.texts: list[str] = []
        for dataset in datasets:
            for query in tqdm(dataset.queries, desc=f"read {dataset.root.name}", unit="clip", leave=False):
                if query.audio:
                    audio, rate = soundfile.read(dataset.root / query.audio, dtype="int16")
                    if rate != SAMPLE_RATE:
                        raise ValueError(f"{dataset.root / query.audio} is at {rate} Hz; spoken splits are 16 kHz")
                    self.clips.append(audio)
                    self.texts.append(heard_words(query.transcript or query.text))
        self.vocabulary = tuple(sorted({w for t in self.texts for w in t.split()}))
        index = {w: i + 1 for i, w in enumerate(self.vocabulary)}
        self.targets = [[index[w] for w in t.split()] for t in self.texts]
        self.wordless = wordless_audio(wordless_clips, np.random.default_rng(seed + 77))
        self.text_embeddings: torch.Tensor | None = None
        log.info(
            "%d spoken queries in %d words, %d wordless clips",
            len(self.clips),
            len(self.vocabulary),
            len(self.wordless),
        )

    def bigram(self) -> torch.Tensor:
        return count_bigram(self.targets, len(self.vocabulary) + 1)

    def embed_texts(self, model: MModalModel, batch: int = 256) -> None:
        """The frozen text embedding of every transcript, once."""
        unique = sorted(set(self.texts))
        rows = [model.encode_text(unique[i : i + batch]) for i in range(0, len(unique), batch)]
        table = dict(zip(unique, torch.cat(rows).float().cpu()))
        self.text_embeddings = torch.stack([table[t] for t in self.texts])

    def batch(self, n: int, rng: np.random.Generator, extras: tuple[str, ...] = SPEECH_EXTRAS):
        """``n`` clips, varied as ``extras`` say: (waves (B, T), lengths (B,), word targets, spoken indices (-1:
        wordless))."""
        n_wordless = int(round(n * WORDLESS_SHARE)) if self.wordless and "wordless" in extras else 0
        n_spoken = min(n - n_wordless, len(self.clips))
        if "grouped" in extras:  # clips of about the same length go together, so that little of a batch is padding
            pool = rng.choice(len(self.clips), size=min(len(self.clips), 4 * n), replace=False)
            pool = pool[np.argsort([len(self.clips[p]) for p in pool], kind="stable")]
            first = int(rng.integers(0, len(pool) - n_spoken + 1))
            picks = [int(p) for p in pool[first : first + n_spoken]]
        else:
            picks = [int(p) for p in rng.choice(len(self.clips), size=n_spoken, replace=False)]
        picks += [-1] * n_wordless
        waves, targets = [], []
        for p in picks:
            if p < 0:
                wave = self.wordless[int(rng.integers(len(self.wordless)))]
                targets.append([])
            else:
                wave = torch.from_numpy(self.clips[p].astype(np.float32) / 32768.0)
                targets.append(self.targets[p])
            waves.append(vary(wave, rng) if "augment" in extras else wave)
        lengths = torch.tensor([len(w) for w in waves])
        batch = torch.zeros(len(waves), int(lengths.max()))
        for i, w in enumerate(waves):
            batch[i, : len(w)] = w
        return batch, lengths, targets, torch.tensor(picks)


def vary(wave: torch.Tensor, rng: np.random.Generator, max_seconds: float = 7.5) -> torch.Tensor:
    """A clip as another speaker, room and microphone might give it: tempo, lead-in and tail, a room's echo, a
    microphone's or telephone's band, gain and extra noise."""
    speed = SPEEDS[int(rng.integers(len(SPEEDS)))]
    if speed != 1.0:
        wave = resample(wave, int(round(SAMPLE_RATE * speed)), SAMPLE_RATE)
    lead, tail = (int(x) for x in rng.uniform(0, 0.4, 2) * SAMPLE_RATE)
    wave = torch.cat([torch.zeros(lead), wave, torch.zeros(tail)])[: int(max_seconds * SAMPLE_RATE)]
    if rng.random() < ROOM_SHARE:
        wave = _room(wave, rng)
    if rng.random() < MICROPHONE_SHARE:
        wave = _microphone(wave, rng)
    power = float(wave.pow(2).mean()) + 1e-8
    if rng.random() < 0.5:
        snr_db = rng.uniform(10, 30)
        wave = wave + torch.from_numpy(rng.normal(0, np.sqrt(power / 10 ** (snr_db / 10)), len(wave))).float()
    else:  # the quiet floor of a real recording under the padding
        wave = wave + torch.from_numpy(rng.normal(0, np.sqrt(power) * 1e-3, len(wave))).float()
    return wave * float(10 ** rng.uniform(-1, 0)) / max(1e-6, float(wave.abs().max()))


def _room(wave: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Reverberation: the clip convolved with a room's impulse response, decaying noise with RT60 0.15–0.7 s."""
    rt60 = rng.uniform(0.15, 0.7)
    t = torch.arange(int(rt60 * SAMPLE_RATE)) / SAMPLE_RATE
    response = torch.from_numpy(rng.normal(0, 1, len(t))).float() * torch.exp(-6.9 * t / rt60)
    response[0] = 1.0 / rng.uniform(0.3, 1.0)  # the direct sound, against the echoes
    wet = torchaudio.functional.fftconvolve(wave, response / response.norm())[: len(wave)]
    return wet / max(1e-6, float(wet.abs().max())) * max(1e-6, float(wave.abs().max()))


def _microphone(wave: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """A cheap microphone's or a telephone's band: low frequencies cut, high ones cut or sampled at 8 kHz."""
    wave = torchaudio.functional.highpass_biquad(wave, SAMPLE_RATE, float(rng.uniform(80, 400)))
    if rng.random() < 0.5:
        narrow = resample(wave, SAMPLE_RATE, 8000)
        return resample(narrow, 8000, SAMPLE_RATE)
    return torchaudio.functional.lowpass_biquad(wave, SAMPLE_RATE, float(rng.uniform(3000, 7000)))


def spec_augment(log_mel: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Two frequency bands and two time spans of each spectrogram (B, M, frames) blanked."""
    out = log_mel.clone()
    bands, frames = out.shape[1], out.shape[2]
    for b in range(len(out)):
        for _ in range(2):
            width = int(rng.integers(0, bands // 8 + 1))
            start = int(rng.integers(0, bands - width + 1))
            out[b, start : start + width] = 0.0
            span = int(rng.integers(0, min(12, frames // 10) + 1))
            first = int(rng.integers(0, frames - span + 1))
            out[b, :, first : first + span] = 0.0
    return out


def speech_losses(
    model: MModalModel, data: SpeechTrainingData, n: int, rng: np.random.Generator, config: TrainConfig, temperature
):
    """One step: CTC of the words (nothing, for wordless clips), and the audio embedding onto its text's."""
    extras = config.speech_extras
    waves, lengths, targets, picks = data.batch(n, rng, extras)
    device = model.device
    waves, lengths = waves.to(device), lengths.to(device)
    tower = model.audio_tower
    log_mel = tower.log_mel(waves, lengths)
    tokens, mask = tower.encode_log_mel(spec_augment(log_mel, rng) if "augment" in extras else log_mel, lengths)
    log_probs = tower.word_log_probs(tokens)  # (B, T', 1 + V)
    flat = torch.tensor([w for t in targets for w in t], dtype=torch.long, device=device)
    ctc = F.ctc_loss(
        log_probs.transpose(0, 1),
        flat,
        mask.sum(1),
        torch.tensor([len(t) for t in targets], device=device),
        zero_infinity=True,
    )
    if "align" not in extras:
        return {"ctc": ctc}
    spoken = picks >= 0
    # The embedding learns on what the words taught the tower, without pulling the tower's tokens its own way.
    audio_emb = model.audio_adapter(tokens[spoken.to(device)].detach(), mask[spoken.to(device)])
    text_emb = data.text_embeddings[picks[spoken]].to(device)
    texts = [data.texts[p] for p in picks[spoken].tolist()]
    same_text = torch.tensor([[a == b for b in texts] for a in texts], device=device)
    scale = temperature.scale().detach()  # the text side's, as the reading stages left it
    align = contrastive_loss(audio_emb, text_emb, scale, same_text).loss + (1 - (audio_emb * text_emb).sum(-1)).mean()
    return {"ctc": ctc, "audio": config.audio_loss_weight * align}


class ValidationClips:
    """Spoken queries of a test split (voices training never heard), scored by greedy CTC word error rate."""

    def __init__(self, folder: str | Path, limit: int = VALIDATION_CLIPS):
        dataset = read_dataset(folder)
        spoken = [q for q in dataset.queries if q.audio][:limit]
        if not spoken:
            raise ValueError(f"{folder} holds no spoken queries to validate on; make a test split with --speech")
        self.waves = []
        for query in spoken:
            wave, rate = soundfile.read(dataset.root / query.audio, dtype="float32")
            self.waves.append(preprocess_audio(torch.from_numpy(wave), rate, AudioEncoderConfig.max_seconds))
        self.texts = [heard_words(q.transcript or q.text).split() for q in spoken]

    @torch.no_grad()
    def word_error_rate(self, tower: AudioEncoder, batch: int = 64) -> float:
        device = tower.positions.device
        was_training = tower.training
        tower.eval()
        errors = 0
        for i in range(0, len(self.waves), batch):
            waves = self.waves[i : i + batch]
            lengths = torch.tensor([len(w) for w in waves])
            padded = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
            tokens, mask = tower(padded.to(device), lengths.to(device))
            heard = greedy_words(tower.word_log_probs(tokens), mask.sum(1), tower.config.vocabulary)
            errors += sum(torchaudio.functional.edit_distance(t, h) for t, h in zip(self.texts[i : i + batch], heard))
        tower.train(was_training)
        return errors / sum(len(t) for t in self.texts)


@lru_cache(maxsize=2)
def validation_clips(folder: str) -> ValidationClips:
    return ValidationClips(folder)


def greedy_words(log_probs: torch.Tensor, lengths: torch.Tensor, vocabulary: tuple[str, ...]) -> list[list[str]]:
    """Best-path CTC decoding: each clip's most likely token per step, repeats merged, blanks (0) dropped."""
    out = []
    for best, n in zip(log_probs.argmax(-1).tolist(), lengths.tolist()):
        ids = best[:n]
        out.append([vocabulary[k - 1] for j, k in enumerate(ids) if k and (j == 0 or ids[j - 1] != k)])
    return out


def wordless_audio(n: int, rng: np.random.Generator) -> list[torch.Tensor]:
    """Clips with no query word in them: near-silence, coloured noise, tones and chords, sweeps, and speech in
    other languages (when espeak-ng is there)."""
    clips = []
    for k in range(n):
        seconds = rng.uniform(0.5, WORDLESS_MAX_SECONDS)
        t = torch.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        kind = k % 5
        if kind == 0:
            wave = torch.from_numpy(rng.normal(0, 10 ** rng.uniform(-4, -2), len(t))).float()
        elif kind == 1:  # white to brown noise
            white = torch.from_numpy(rng.normal(0, 1, len(t))).float()
            spectrum = torch.fft.rfft(white)
            tilt = torch.arange(1, len(spectrum) + 1).float() ** -rng.uniform(0, 1)
            wave = torch.fft.irfft(spectrum * tilt, n=len(t))
        elif kind == 2:  # a few notes, one after another, with their chords
            wave = torch.zeros(len(t))
            notes = rng.integers(1, 6)
            for i, start in enumerate(np.linspace(0, len(t), notes + 1)[:-1].astype(int)):
                stop = min(len(t), start + len(t) // notes)
                for f in 110 * 2 ** (rng.integers(0, 36, size=rng.integers(1, 4)) / 12):
                    wave[start:stop] += torch.sin(2 * np.pi * float(f) * t[start:stop]) * (0.8**i)
        elif kind == 3:  # a sweep with tremolo
            f0, f1 = rng.uniform(100, 4000, 2)
            phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds))
            wave = torch.sin(phase) * (1 + 0.5 * torch.sin(2 * np.pi * rng.uniform(2, 10) * t))
        else:
            wave = _foreign_speech(rng)
        clips.append(wave.float() / max(1e-6, float(wave.abs().max())))
    return clips


def _foreign_speech(rng: np.random.Generator) -> torch.Tensor:
    voice = Voice(
        voice=WORDLESS_LANGUAGES[int(rng.integers(len(WORDLESS_LANGUAGES)))],
        words_per_minute=int(rng.integers(130, 220)),
        pitch=int(rng.integers(20, 80)),
        snr_db=40.0,
        noise_seed=int(rng.integers(2**31 - 1)),
    )
    numbers = " ".join(str(int(x)) for x in rng.integers(0, 1000, size=int(rng.integers(1, 3))))
    return torch.from_numpy(synthesize(numbers, voice))[: int(WORDLESS_MAX_SECONDS * SAMPLE_RATE)]
