"""Spoken queries: clips in browser and phone formats, words from the CTC head, and the speech recipe."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import soundfile
import torch

from mmodal.cli import main
from mmodal.data.audio import read_audio
from mmodal.data.dataset import read_dataset
from mmodal.data.generate import generate_shapes
from mmodal.encoders.transcribe import MIN_CONFIDENCE, WordDecoder, count_bigram
from mmodal.pipeline import index_collection
from mmodal.shapes import speech
from mmodal.training.config import TrainConfig
from mmodal.training.loop import CURVE_FILE, train
from mmodal.training.speech_recipe import vary

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
@pytest.mark.skipif(not speech.can_speak(), reason="espeak-ng and flite make the spoken splits")
def test_speech_recipe_trains_a_transcriber_that_search_listens_with(tmp_path, capsys):
    data = tmp_path / "speech"
    generate_shapes(data / "part-1", n=20, seed=3, split="train", with_speech=True, n_queries=24, workers=1)
    out = tmp_path / "run"
    args = ["train", "--recipe", "speech", "--model", "tiny", "--speech-data", str(data), "--out", str(out)]
    assert main([*args, "--speech-steps", "3"]) == 0
    queries = read_dataset(data / "part-1").queries
    worded = [q for q in queries if q.transcript]
    # About half the training clips say the query as people word it; the rest as the grammar writes it.
    assert 0 < len(worded) < len(queries) and all(q.transcript != q.text for q in worded)
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


def test_a_test_split_speaks_only_in_voices_that_training_never_hears():
    rng = np.random.default_rng(0)
    train_voices = {
        (v.synthesizer, v.voice.split("+")[-1]) for v in (speech.sample_voice(rng, "train") for _ in range(3000))
    }
    test_voices = {
        (v.synthesizer, v.voice.split("+")[-1]) for v in (speech.sample_voice(rng, "test") for _ in range(600))
    }
    assert {s for s, _ in train_voices} == {s for s, _ in test_voices} == set(speech.SYNTHESIZERS)
    assert not train_voices & test_voices
    assert ("flite", "slt") in test_voices and len(test_voices) == 1 + len(speech.TEST_VARIANTS)


def test_what_a_listener_writes_down_has_one_spelling_per_sound():
    assert speech.heard_words("Show me 2 grey, blue-coloured circles.") == "show me two gray blue colored circles"
    assert speech.heard_words("What's the colour of the 12 stars?") == "what s the color of the one two stars"


@pytest.mark.skipif(shutil.which("flite") is None, reason="flite is not installed: `make setup` installs it")
@pytest.mark.parametrize("name", speech.FLITE_TRAIN_VOICES + speech.FLITE_TEST_VOICES)
def test_flite_speaks_a_query_at_16_khz_with_its_speed_and_noise(name):
    fast, slow = (
        speech.Voice(name, words_per_minute=wpm, pitch=50, snr_db=30.0, noise_seed=1, synthesizer="flite")
        for wpm in (210, 140)
    )
    quick, drawn_out = (speech.synthesize("a red circle left of a blue square", v) for v in (fast, slow))
    assert quick.dtype == np.float32 and quick.ndim == 1 and np.abs(quick).max() <= 1.0
    assert 1.0 * speech.SAMPLE_RATE < len(quick) < len(drawn_out) < 6 * speech.SAMPLE_RATE


def test_varied_clips_stay_the_same_words_at_a_usable_level():
    rng = np.random.default_rng(3)
    t = torch.arange(16_000) / 16_000
    wave = torch.sin(2 * np.pi * 300 * t) * (t < 0.5)  # half a second of tone, then silence
    for _ in range(40):
        varied = vary(wave, rng)
        assert torch.isfinite(varied).all() and 0.09 < float(varied.abs().max()) <= 1.0
        assert 0.85 * 16_000 <= len(varied) <= 1.12 * 16_000 + 0.8 * 16_000  # tempo ±10 %, lead-in and tail


@pytest.mark.slow
@pytest.mark.skipif(not speech.can_speak(), reason="espeak-ng and flite make the spoken splits")
def test_the_speech_stage_as_its_probe_logs_its_word_error_rate_on_held_out_voices(tmp_path):
    generate_shapes(tmp_path / "train", n=10, seed=5, split="train", with_speech=True, n_queries=12, workers=1)
    generate_shapes(tmp_path / "test", n=10, seed=6, split="test", with_speech=True, n_queries=8, workers=1)
    config = TrainConfig(
        out=str(tmp_path / "run"),
        recipe="speech",
        model="tiny",
        speech_data=str(tmp_path / "train"),
        speech_steps=4,
        speech_extras=(),
        speech_validation=str(tmp_path / "test"),
        validate_every=2,
    )
    train(config)
    lines = [json.loads(line) for line in (tmp_path / "run" / CURVE_FILE).read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4]
    assert all(set(line) == {"step", "stage", "ctc", "wer"} for line in lines)  # no embedding loss: as the probe
    assert all(line["wer"] >= 0.5 for line in lines)  # four steps hear next to nothing


def test_clear_words_that_ask_for_nothing_are_searched_by_sound_and_said_so(model):
    from mmodal.encoders.transcribe import Transcript
    from mmodal.search import Query, Searcher, searchable

    # Speech in another language often comes out as a few clear function words: they hold of every picture.
    for words in ("a", "the", "an object", "a picture"):
        assert not searchable(model, Transcript(words, 0.98)), words
    for words in ("a yellow circle", "two objects", "big", "a red circle left of a blue square"):
        assert searchable(model, Transcript(words, 0.98)), words
    assert not searchable(model, Transcript("a yellow circle", MIN_CONFIDENCE / 2))
    message = Searcher.doubt(Transcript("a", 0.98), Query(audio=(_tone(), 16_000)))
    assert message.startswith('heard "a", which names nothing to look for') and "searched by its sound" in message
