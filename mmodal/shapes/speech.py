"""Spoken queries: espeak-ng reads a text aloud with a sampled voice, speed, pitch and noise level."""

from __future__ import annotations

import io
import shutil
import subprocess
from dataclasses import asdict, dataclass

import numpy as np
import soundfile

SAMPLE_RATE = 16_000
BASE_WORDS_PER_MINUTE = 175
SPEED_RANGE = 0.25
SNR_RANGE_DB = (10.0, 30.0)
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan")
# Voice variants are split so that test audio is spoken in voices training never heard.
TRAIN_VARIANTS = ("", "m1", "m2", "m3", "m4", "f1", "f2", "f3", "klatt", "klatt2")
TEST_VARIANTS = TRAIN_VARIANTS + ("m5", "m6", "f4", "f5", "klatt3")


class SpeechSynthesisError(RuntimeError):
    """espeak-ng is missing or failed to speak a text."""


@dataclass(frozen=True)
class Voice:
    """One speaking setting, kept in each query record."""

    voice: str  # espeak-ng voice name, e.g. "en-us+f3"
    words_per_minute: int
    pitch: int  # espeak-ng pitch, 0–99
    snr_db: float
    noise_seed: int

    def to_dict(self) -> dict:
        return asdict(self)


def sample_voice(rng: np.random.Generator, split: str) -> Voice:
    """A random voice covering the spec's range: accent and variant, speed ±25 %, pitch, SNR 10–30 dB."""
    variants = TRAIN_VARIANTS if split == "train" else TEST_VARIANTS
    accent = ACCENTS[int(rng.integers(len(ACCENTS)))]
    variant = variants[int(rng.integers(len(variants)))]
    return Voice(
        voice=f"{accent}+{variant}" if variant else accent,
        words_per_minute=int(round(BASE_WORDS_PER_MINUTE * rng.uniform(1 - SPEED_RANGE, 1 + SPEED_RANGE))),
        pitch=int(rng.integers(20, 81)),
        snr_db=float(round(rng.uniform(*SNR_RANGE_DB), 2)),
        noise_seed=int(rng.integers(0, 2**31 - 1)),
    )


def espeak_path() -> str:
    """The espeak-ng executable, or a :class:`SpeechSynthesisError` saying how to install it."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise SpeechSynthesisError(
            "espeak-ng is not installed; install it (Debian/Ubuntu: apt-get install espeak-ng) "
            "or run `make setup`, which installs it"
        )
    return path


def synthesize(text: str, voice: Voice) -> np.ndarray:
    """Speaks ``text`` and returns 16 kHz mono float32 audio with noise added at ``voice.snr_db``."""
    cmd = [espeak_path(), "-v", voice.voice, "-s", str(voice.words_per_minute), "-p", str(voice.pitch), "--stdout"]
    result = subprocess.run(cmd + [text], capture_output=True, timeout=60, check=False)
    if result.returncode != 0 or not result.stdout:
        raise SpeechSynthesisError(f"espeak-ng failed on {text!r} with voice {voice.voice}: {result.stderr.decode()}")
    audio, rate = soundfile.read(io.BytesIO(result.stdout), dtype="float32")
    audio = _resample(audio, rate, SAMPLE_RATE)
    rng = np.random.default_rng(voice.noise_seed)
    signal_power = float(np.mean(audio**2)) + 1e-12
    noise = rng.normal(0.0, np.sqrt(signal_power / 10 ** (voice.snr_db / 10)), audio.shape).astype(np.float32)
    mixed = audio + noise
    return (mixed / max(1.0, float(np.abs(mixed).max()))).astype(np.float32)


def _resample(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return audio
    import torch
    import torchaudio.functional

    return torchaudio.functional.resample(torch.from_numpy(audio), rate, target).numpy()


def write_wav(path, audio: np.ndarray) -> None:
    """Writes 16-bit PCM mono WAV at 16 kHz."""
    soundfile.write(path, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
