"""Voice clips from files, in the formats that browsers and phones record: libsndfile (soundfile) reads WAV,
FLAC, OGG/Vorbis and Opus, and MP3 itself; anything else (M4A/AAC, WebM, …) goes through ffmpeg."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile

MAX_CLIP_SECONDS = 60
DECODE_RATE = 16_000  # ffmpeg hands over 16 kHz mono, what the audio tower hears
FORMATS = "WAV, MP3, M4A/AAC, OGG/Opus, WebM or FLAC"


def read_audio(path: str, shown_as: str | None = None) -> tuple[np.ndarray, int]:
    """A clip as (mono or multi-channel float32 waveform, sample rate); errors name the file as ``shown_as``
    (by default its path) and say what to do."""
    name = shown_as or path
    if not Path(path).is_file():
        raise FileNotFoundError(f"no audio file at {name}")
    try:
        duration = soundfile.info(path).duration
    except (soundfile.LibsndfileError, RuntimeError, TypeError):
        return _read_with_ffmpeg(path, name)
    if duration > MAX_CLIP_SECONDS:  # refused before decoding: an hour of audio is gigabytes of samples
        raise ValueError(f"{name} lasts {duration:.0f} s; a spoken query may last at most {MAX_CLIP_SECONDS} s")
    try:
        waveform, rate = soundfile.read(path, dtype="float32", always_2d=False)
    except (soundfile.LibsndfileError, RuntimeError) as error:
        reason = str(error).replace(path, name)
        raise ValueError(f"cannot read {name} as audio ({reason}); give a {FORMATS} file") from None
    return waveform, rate


def _read_with_ffmpeg(path: str, name: str) -> tuple[np.ndarray, int]:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise ValueError(
            f"cannot read {name}: it is not WAV, FLAC, OGG or MP3, and other formats need ffmpeg, which is not "
            "installed (`make setup` installs it; or apt-get install ffmpeg)"
        )
    # One second past the limit is decoded at most, so that an over-long clip is known without decoding it all.
    cmd = [ffmpeg, "-v", "error", "-nostdin", "-i", path, "-vn", "-t", str(MAX_CLIP_SECONDS + 1)]
    cmd += ["-f", "f32le", "-ac", "1", "-ar", str(DECODE_RATE), "-"]
    try:
        result = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        raise ValueError(f"cannot read {name} as audio: decoding it took over two minutes") from None
    waveform = np.frombuffer(result.stdout, dtype=np.float32)
    if result.returncode != 0 or waveform.size == 0:
        raise ValueError(f"cannot read {name} as audio: it holds no sound mmodal can decode; give a {FORMATS} file")
    if waveform.size > MAX_CLIP_SECONDS * DECODE_RATE:
        raise ValueError(f"{name} lasts over {MAX_CLIP_SECONDS} s; a spoken query may last at most that")
    return waveform.copy(), DECODE_RATE
