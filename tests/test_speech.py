"""Spoken queries: clips in browser and phone formats, words from the CTC head, and the speech recipe."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import soundfile
import torch

from encoders.transcribe import MIN_CONFIDENCE, WordDecoder, count_bigram
from mmodal.cli import main
from mmodal.data.audio import read_audio
from mmodal.data.generate import generate_shapes
from mmodal.pipeline import index_collection

VOCABULARY = ("a", "blue", "circle", "red", "square")


def _tone(seconds: float = 1.5, rate: int = 16_000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.4 * np.sin(2 * np.pi * 440 * t) * np.sin(2 * np.pi * 1.5 * t)).astype(np.float32)


@pytest.mark.parametrize(
    "suffix, codec",
    [(".mp3", []), (".m4a", ["-c:a", "aac"]), (".ogg", ["-c:a", "libopus"]), (".webm", ["-c:a", "libopus"])],
)
def test_clips_in_browser_and_phone_formats_decode_to_the_same_sound(tmp_path, suffix, codec):
    ffmpeg = shutil.which("ffmpeg")
    assert ffmpeg, "ffmpeg is missing: `make setup` installs it"
    wav = tmp_path / "clip.wav"
    soundfile.write(wav, _tone(), 16_000)
    coded = tmp_path / f"clip{suffix}"
    subprocess.run([ffmpeg, "-v", "error", "-y", "-i", str(wav), *codec, str(coded)], check=True)
    waveform, rate = read_audio(str(coded))
    seconds = len(waveform) / rate
    assert seconds == pytest.approx(1.5, abs=0.08)  # encoders pad a few frames
    assert waveform.ndim == 1  # a mono clip stays mono
    spectrum = np.abs(np.fft.rfft(waveform))
    assert np.fft.rfftfreq(len(waveform), 1 / rate)[spectrum.argmax()] == pytest.approx(440, abs=5)


def test_a_file_that_is_not_audio_gets_a_clear_message(tmp_path):
    picture = tmp_path / "holiday.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    with pytest.raises(ValueError, match="cannot read holiday.png as audio"):
        read_audio(str(picture), shown_as="holiday.png")
    with pytest.raises(FileNotFoundError, match="no audio file"):
        read_audio(str(tmp_path / "missing.wav"))


def _emissions(frames: list[int], size: int, strength: float = 8.0) -> torch.Tensor:
    logits = torch.zeros(1, len(frames), size)
    for t, k in enumerate(frames):
        logits[0, t, k] = strength
    return logits.log_softmax(-1)


def test_word_decoder_spells_the_words_and_how_sure_it_is():
    bigram = count_bigram([[1, 4, 3], [1, 2, 5]], len(VOCABULARY) + 1)
    decoder = WordDecoder(VOCABULARY, bigram)
    # a red circle, with blanks and a repeated frame between the words
    clear = decoder(_emissions([1, 0, 4, 4, 0, 3, 0, 0], 6), torch.tensor([8]))[0]
    assert clear.text == "a red circle" and [w for w, _ in clear.words] == ["a", "red", "circle"]
    assert clear.confidence > 0.95 and clear.heard
    faint = decoder(_emissions([1, 0, 4, 4, 0, 3, 0, 0], 6, strength=1.0), torch.tensor([8]))[0]
    assert faint.confidence < MIN_CONFIDENCE and not faint.heard
    nothing = decoder(_emissions([0] * 8, 6), torch.tensor([8]))[0]
    assert nothing.text == "" and nothing.confidence == 0.0 and not nothing.heard


def test_the_bigram_prior_is_a_distribution_over_what_follows():
    bigram = count_bigram([[1, 4, 3], [1, 2, 5]], 6)
    assert torch.allclose(bigram.exp().sum(1), torch.ones(6))
    assert bigram[1, 4] > bigram[1, 3]  # "a red" was seen, "a circle" never


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng makes the spoken training split")
def test_speech_recipe_trains_a_transcriber_that_search_listens_with(tmp_path, capsys):
    data = tmp_path / "speech"
    generate_shapes(data / "part-1", n=20, seed=3, split="train", with_speech=True, n_queries=24, workers=1)
    out = tmp_path / "run"
    args = ["train", "--recipe", "speech", "--model", "tiny", "--speech-data", str(data), "--out", str(out)]
    assert main([*args, "--speech-steps", "3"]) == 0
    from mmodal.model import MModalModel

    model = MModalModel.from_pretrained(out / "model")
    assert model.transcribes and "circle" in model.config.audio.vocabulary
    index = tmp_path / "index"
    index_collection(model, [data / "part-1" / "images"], index, workers=1, show_progress=False)
    clip = next((data / "part-1" / "audio").glob("*.wav"))
    capsys.readouterr()
    assert main(["search", "--index", str(index), "--audio", str(clip), "--json"]) == 0
    reply = json.loads(capsys.readouterr().out)
    # A barely trained head hears nothing clearly, so the clip is searched by its sound, and says so.
    assert set(reply) >= {"transcript", "confidence", "words", "searched_by", "message", "results"}
    assert reply["searched_by"] == "sound" and reply["message"] and len(reply["results"]) == 10
    assert 0.0 <= reply["confidence"] < MIN_CONFIDENCE
