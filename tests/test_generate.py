"""The Shapes generator: determinism, conformance to the spec, the hold-out, speech and the CLI."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from mmodal.data.dataset import read_dataset
from mmodal.data.generate import generate_shapes
from mmodal.shapes import speech
from mmodal.shapes.scene import HELD_OUT_PAIRS, RELATIONS
from mmodal.shapes.semantics import QUESTION_TYPES, CountPhrase, RelationPhrase, parse_question, parse_statement
from mmodal.shapes.world import any_statement
from tests.spec_check import check_dataset

needs_speech = pytest.mark.skipif(not speech.can_speak(), reason="espeak-ng or flite is not installed")


def _digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    generate_shapes(tmp_path / "a", n=40, seed=3, split="test", n_queries=20, workers=1)
    generate_shapes(tmp_path / "b", n=40, seed=3, split="test", n_queries=20, workers=2)
    generate_shapes(tmp_path / "c", n=40, seed=4, split="test", n_queries=20, workers=2)
    a, b, c = (_digest(tmp_path / x) for x in "abc")
    assert a == b
    assert a["images.jsonl"] != c["images.jsonl"]


def test_rerun_over_a_partial_folder_gives_the_same_dataset(tmp_path):
    generate_shapes(tmp_path / "full", n=30, seed=8, split="train", workers=2)
    partial = tmp_path / "partial"
    generate_shapes(partial, n=30, seed=8, split="train", workers=2)
    # A crash mid-way: the completion marker and some images are gone, a stray temporary file is left.
    (partial / "dataset.json").unlink()
    for p in sorted((partial / "images").iterdir())[:10]:
        p.unlink()
    (partial / "images" / ".000003.png.tmp.partial").write_bytes(b"half")
    generate_shapes(partial, n=30, seed=8, split="train", workers=2)
    assert _digest(partial) == _digest(tmp_path / "full")


def test_test_split_conforms_to_the_spec(shapes_test_dir):
    assert check_dataset(shapes_test_dir) == []


def test_train_split_conforms_and_never_shows_held_out_pairs(shapes_train_dir):
    assert check_dataset(shapes_train_dir) == []
    dataset = read_dataset(shapes_train_dir)
    assert not any((o.color, o.shape) in HELD_OUT_PAIRS for r in dataset.images for o in r.scene.objects)
    statements = (
        [c.text for c in dataset.captions] + [f.foil for f in dataset.foils] + [q.text for q in dataset.queries]
    )
    assert not any(parse_statement(t).held_out for t in statements)
    assert not any(parse_question(q.question).held_out for q in dataset.questions)
    assert not any(q.answer in {f"{c} {s}" for c, s in HELD_OUT_PAIRS} for q in dataset.questions)


def test_test_split_covers_every_kind_and_the_hold_out(shapes_test_dir):
    dataset = read_dataset(shapes_test_dir)
    assert {q.type for q in dataset.questions} == set(QUESTION_TYPES)
    assert {f.kind for f in dataset.foils} == {"color_swap", "relation_swap", "count_change"}
    assert {q.kind for q in dataset.queries} == {"object", "binding", "relation", "count", "conjunction", "held_out"}
    assert any((o.color, o.shape) in HELD_OUT_PAIRS for r in dataset.images for o in r.scene.objects)
    assert {c.kind for c in dataset.captions} == {"list", "relation", "count"}
    yes_no = [q.answer for q in dataset.questions if q.type in ("exist", "relation")]
    assert 0.2 < yes_no.count("yes") / len(yes_no) < 0.8


def test_images_cover_the_variation_range(tmp_path):
    dataset = generate_shapes(tmp_path, n=200, seed=2, split="test", n_queries=10, workers=2)
    render = [r.render for r in dataset.images]
    assert {r["background"] for r in render} == {"black", "gray", "noise"}
    assert {r["antialias"] for r in render} == {True, False} and {r["outline"] for r in render} == {True, False}
    assert {Path(r.file).suffix for r in dataset.images} == {".png", ".jpg"}
    qualities = [r["jpeg_quality"] for r in render if "jpeg_quality" in r]
    assert 60 <= min(qualities) < 70 and 85 < max(qualities) <= 95
    sides = [s for r in dataset.images for s in (r.scene.width, r.scene.height)]
    assert 64 <= min(sides) < 90 and 230 < max(sides) <= 256
    assert any(r.scene.width != r.scene.height for r in dataset.images)
    angles = {round(o.angle) for r in dataset.images for o in r.scene.objects if o.shape != "circle"}
    assert len(angles) > 100
    counts = {len(r.scene.objects) for r in dataset.images}
    assert counts == {1, 2, 3, 4}


@needs_speech
def test_spoken_queries_vary_voice_speed_pitch_and_noise(shapes_test_dir):
    dataset = read_dataset(shapes_test_dir)
    voices = [q.voice for q in dataset.queries]
    assert all(q.audio for q in dataset.queries)
    assert len({v["voice"] for v in voices}) > 5
    assert {v["synthesizer"] for v in voices} == set(speech.SYNTHESIZERS)
    wpm = [v["words_per_minute"] for v in voices]
    assert 131 <= min(wpm) < 150 and 200 < max(wpm) <= 219
    assert all(10 <= v["snr_db"] <= 30 for v in voices)
    audio, rate = soundfile.read(shapes_test_dir / dataset.queries[0].audio)
    assert rate == 16_000 and audio.ndim == 1 and len(audio) > 0.3 * rate
    assert np.sqrt(np.mean(audio**2)) > 1e-3


@pytest.mark.slow
def test_cli_generates_and_reports(tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmodal.cli",
            "data",
            "shapes",
            "--out",
            str(out),
            "--n",
            "12",
            "--seed",
            "1",
            "--split",
            "train",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "wrote 12 images" in result.stdout and str(out) in result.stdout
    assert json.loads((out / "dataset.json").read_text())["counts"]["images"] == 12
    bad = subprocess.run(
        [sys.executable, "-m", "mmodal.cli", "data", "shapes", "--out", str(out), "--n", "0"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "must be at least 1" in bad.stderr


def test_statements_from_the_whole_grammar_parse_back_and_keep_the_hold_out():
    rng = np.random.default_rng(0)
    statements = [any_statement(rng, "train") for _ in range(3000)]
    assert all(parse_statement(s.text()) == s for s in statements)
    assert not any(s.held_out for s in statements)
    parts = [p for s in statements for p in s.parts]
    counts = [p.count for p in parts if isinstance(p, CountPhrase)]
    relations = [p.relation for p in parts if isinstance(p, RelationPhrase)]
    assert set(counts) == {1, 2, 3, 4} and min(np.bincount(counts)[1:]) > 0.2 * len(counts)
    assert set(relations) == set(RELATIONS)
    assert any(any_statement(rng, "test").held_out for _ in range(3000))


def test_questions_from_the_whole_grammar_parse_back_and_keep_the_hold_out():
    from mmodal.shapes.question_sampling import any_question
    from mmodal.shapes.semantics import QUESTION_TYPES, parse_question

    rng = np.random.default_rng(0)
    questions = [any_question(rng, "train") for _ in range(3000)]
    assert all(parse_question(q.text()) == q for q in questions)
    assert not any(q.held_out for q in questions)
    types = [QUESTION_TYPES.index(q.type) for q in questions]
    assert min(np.bincount(types, minlength=len(QUESTION_TYPES))) > 0.1 * len(questions)
    assert {q.relation for q in questions if q.relation} == set(RELATIONS)
    assert any(any_question(rng, "test").held_out for _ in range(3000))
