"""Spoken queries: a synthesizer (espeak-ng or flite) reads a text aloud with a sampled voice, speed, pitch and
noise level. Each synthesizer's voices are split: the test split speaks only in voices training never heard."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass

import numpy as np
import soundfile
import torch

from mmodal.encoders.audio import resample
from mmodal.encoders.tokenizer import WORD

SAMPLE_RATE = 16_000
BASE_WORDS_PER_MINUTE = 175
SPEED_RANGE = 0.25
SNR_RANGE_DB = (10.0, 30.0)
SYNTHESIZERS = ("espeak-ng", "flite")
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan")
# espeak-ng's voice variants (`espeak-ng --voices=variant`): twelve are heard only in test splits.
TEST_VARIANTS = ("m5", "m6", "f4", "f5", "klatt3", "Andy", "Annie", "Gene", "linda", "Mario", "norbert", "steph2")
TRAIN_VARIANTS = (
    *("", "m1", "m2", "m3", "m4", "m7", "m8", "f1", "f2", "f3", "klatt", "klatt2", "klatt4", "klatt5", "klatt6"),
    *("adam", "Alex", "Alicia", "Andrea", "antonio", "aunty", "belinda", "benjamin", "boris", "caleb", "david"),
    *("Denis", "Diogo", "ed", "edward", "edward2", "Gene2", "gustave", "Henrique", "Hugo", "iven", "iven2"),
    *("iven3", "iven4", "Jacky", "john", "kaukovalta", "Lee", "marcelo", "Marco", "max", "Michael", "michel"),
    *("miguel", "Mike", "Mr", "Nguyen", "pablo", "paul", "pedro", "quincy", "RicishayMax", "rob", "robert"),
    *("sandro", "shelby", "steph", "steph3", "Storm", "travis", "victor", "zac", "anika", "AnxiousAndy"),
    *("grandma", "grandpa", "whisper", "whisperf", "croak", "announcer", "robosoft", "Tweaky"),
)
# flite's built-in voices (`flite -lv`); slt is heard only in test splits.
FLITE_TRAIN_VOICES = ("kal", "kal16", "awb", "rms")
FLITE_TEST_VOICES = ("slt",)


# Words that sound alike are written one way in what a listener hears.
SPOKEN_SPELLINGS = {"colour": "color", "coloured": "colored", "grey": "gray"}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def heard_words(text: str) -> str:
    """What a listener can write down of ``text`` said aloud: lower-case words without punctuation, digits as
    number words, one spelling for words that sound alike ("colour" and "color")."""
    words = []
    for word in WORD.findall(text.lower()):
        if word.isdigit() and int(word) < len(NUMBER_WORDS):
            words.append(NUMBER_WORDS[int(word)])
        elif word.isdigit():  # said digit by digit
            words += [NUMBER_WORDS[int(digit)] for digit in word]
        else:
            words.append(SPOKEN_SPELLINGS.get(word, word))
    return " ".join(words)


class SpeechSynthesisError(RuntimeError):
    """espeak-ng is missing or failed to speak a text."""


@dataclass(frozen=True)
class Voice:
    """One speaking setting, kept in each query record."""

    voice: str  # the synthesizer's voice name, e.g. espeak-ng's "en-us+f3" or flite's "slt"
    words_per_minute: int
    pitch: int  # 0–99 (espeak-ng's pitch; for flite, the mean of the intonation's target from 80 to 180 Hz)
    snr_db: float
    noise_seed: int
    synthesizer: str = "espeak-ng"

    def to_dict(self) -> dict:
        return asdict(self)


def sample_voice(rng: np.random.Generator, split: str) -> Voice:
    """A random voice covering the spec's range: synthesizer, voice (espeak-ng: accent and variant), speed ±25 %,
    pitch, SNR 10–30 dB; in a test split, only voices that training never hears."""
    synthesizer = SYNTHESIZERS[int(rng.integers(len(SYNTHESIZERS)))]
    if synthesizer == "flite":
        voices = FLITE_TRAIN_VOICES if split == "train" else FLITE_TEST_VOICES
        name = voices[int(rng.integers(len(voices)))]
    else:
        variants = TRAIN_VARIANTS if split == "train" else TEST_VARIANTS
        accent = ACCENTS[int(rng.integers(len(ACCENTS)))]
        variant = variants[int(rng.integers(len(variants)))]
        name = f"{accent}+{variant}" if variant else accent
    return Voice(
        voice=name,
        words_per_minute=int(round(BASE_WORDS_PER_MINUTE * rng.uniform(1 - SPEED_RANGE, 1 + SPEED_RANGE))),
        pitch=int(rng.integers(20, 81)),
        snr_db=float(round(rng.uniform(*SNR_RANGE_DB), 2)),
        noise_seed=int(rng.integers(0, 2**31 - 1)),
        synthesizer=synthesizer,
    )


def synthesizer_path(name: str = "espeak-ng") -> str:
    """The synthesizer's executable, or a :class:`SpeechSynthesisError` saying how to install it."""
    path = shutil.which(name)
    if path is None:
        raise SpeechSynthesisError(
            f"{name} is not installed; install it (Debian/Ubuntu: apt-get install {name}) "
            "or run `make setup`, which installs it"
        )
    return path


def require_synthesizers() -> None:
    """Raises a :class:`SpeechSynthesisError` saying how to install any synthesizer that spoken splits use and
    that is missing."""
    for name in SYNTHESIZERS:
        synthesizer_path(name)


def can_speak() -> bool:
    """Whether every synthesizer that spoken splits use is installed."""
    return all(shutil.which(name) for name in SYNTHESIZERS)


def synthesize(text: str, voice: Voice) -> np.ndarray:
    """Speaks ``text`` and returns 16 kHz mono float32 audio with noise added at ``voice.snr_db``."""
    audio, rate = _flite(text, voice) if voice.synthesizer == "flite" else _espeak(text, voice)
    audio = resample(torch.from_numpy(audio), rate, SAMPLE_RATE).numpy()
    rng = np.random.default_rng(voice.noise_seed)
    signal_power = float(np.mean(audio**2)) + 1e-12
    noise = rng.normal(0.0, np.sqrt(signal_power / 10 ** (voice.snr_db / 10)), audio.shape).astype(np.float32)
    mixed = audio + noise
    return (mixed / max(1.0, float(np.abs(mixed).max()))).astype(np.float32)


def _espeak(text: str, voice: Voice) -> tuple[np.ndarray, int]:
    cmd = [synthesizer_path(), "-v", voice.voice, "-s", str(voice.words_per_minute), "-p", str(voice.pitch)]
    result = subprocess.run([*cmd, "--stdout", text], capture_output=True, timeout=60, check=False)
    if result.returncode != 0 or not result.stdout:
        raise SpeechSynthesisError(f"espeak-ng failed on {text!r} with voice {voice.voice}: {result.stderr.decode()}")
    return soundfile.read(io.BytesIO(result.stdout), dtype="float32")


def _flite(text: str, voice: Voice) -> tuple[np.ndarray, int]:
    stretch = BASE_WORDS_PER_MINUTE / voice.words_per_minute
    pitch_hz = 80 + voice.pitch
    with tempfile.TemporaryDirectory() as folder:
        wav = f"{folder}/speech.wav"
        cmd = [synthesizer_path("flite"), "-voice", voice.voice, "--setf", f"duration_stretch={stretch:.3f}"]
        cmd += ["--setf", f"int_f0_target_mean={pitch_hz}", "-t", text, "-o", wav]
        result = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
        if result.returncode != 0 or not os.path.exists(wav) or os.path.getsize(wav) == 0:
            raise SpeechSynthesisError(f"flite failed on {text!r} with voice {voice.voice}: {result.stderr.decode()}")
        return soundfile.read(wav, dtype="float32")


def write_wav(path, audio: np.ndarray) -> None:
    """Writes 16-bit PCM mono WAV at 16 kHz."""
    soundfile.write(path, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
