"""The indexing pipeline and search, end to end through the CLI, with a small untrained model."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmodal.cli import main
from mmodal.config import tiny_config
from mmodal.data.generate import generate_shapes
from mmodal.encoders.tokenizer import build_tokenizer
from mmodal.indexes.collection import ImageIndex
from mmodal.indexes.metadata import METADATA_FILE
from mmodal.model import MModalModel
from reliability.hostile_images import make_hostile_folder

QUERIES = ["a red circle", "two blue squares", "a green star left of a white hexagon"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    texts = [f"a {c} {s}" for c in ("red", "blue", "green", "white") for s in ("circle", "square", "star")] * 20
    model = MModalModel(tiny_config(), build_tokenizer(texts, vocab_size=300)).eval()
    folder = tmp_path_factory.mktemp("model") / "tiny"
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("collection") / "shapes"
    generate_shapes(root, n=240, seed=21, split="test", n_queries=10, workers=2)
    return root / "images"


def _index(args: list[str], capsys) -> dict:
    assert main(["index", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _search(index: Path, text: str, capsys, *extra: str) -> list[dict]:
    assert main(["search", text, "--index", str(index), "-k", "10", "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_index_search_and_reindex_without_model_work(collection, model_dir, tmp_path, capsys):
    photos = _copy(collection, tmp_path / "photos")
    index = tmp_path / "index"
    first = _index([str(photos), "--index", str(index), "--model", str(model_dir)], capsys)
    assert first["indexed"] == 240 and first["skipped"] == [] and first["images_in_index"] == 240

    again = _index([str(photos), "--index", str(index), "--model", str(model_dir)], capsys)
    assert again["indexed"] == 0 and again["unchanged"] == 240

    results = _search(index, "a red circle", capsys)
    assert len(results) == 10 and all(Path(r["path"]).parent == photos for r in results)
    assert all(r["rerank_score"] is not None for r in results)
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    plain = _search(index, "a red circle", capsys, "--no-rerank")
    assert all(r["rerank_score"] is None for r in plain)
    assert [r["score"] for r in plain] == sorted((r["score"] for r in plain), reverse=True)

    example = sorted(photos.iterdir())[5]
    assert main(["search", "--image", str(example), "--index", str(index), "--json", "-k", "3"]) == 0
    by_image = json.loads(capsys.readouterr().out)
    assert by_image[0]["path"] == str(example) and by_image[0]["score"] == pytest.approx(1.0, abs=1e-4)

    combined = _search(index, "a blue object", capsys, "--image", str(example), "--not", "a red circle")
    assert len(combined) == 10


def test_moved_copied_and_deleted_files(collection, model_dir, tmp_path, capsys):
    photos = _copy(collection, tmp_path / "photos")
    index = tmp_path / "index"
    _index([str(photos), "--index", str(index), "--model", str(model_dir)], capsys)
    names = sorted(p.name for p in photos.iterdir())
    (photos / "moved").mkdir()
    os.replace(photos / names[0], photos / "moved" / names[0])  # moved: known by its hash
    shutil.copy(photos / names[1], photos / f"copy-{names[1]}")  # a copy: same picture, second path
    (photos / names[2]).unlink()  # deleted
    summary = _index([str(photos), "--index", str(index), "--model", str(model_dir)], capsys)
    assert summary["indexed"] == 0 and summary["relinked"] == 2 and summary["removed"] == 2
    assert summary["images_in_index"] == 239
    with ImageIndex.open(index) as opened:
        assert opened.store.file_state(str(photos / "moved" / names[0])) is not None
        assert opened.store.file_state(str(photos / names[0])) is None
        items = opened.store.items(opened.store.ids().tolist()).values()
    copies = [item.paths for item in items if len(item.paths) > 1]
    assert copies == [sorted([str(photos / f"copy-{names[1]}"), str(photos / names[1])])]


def test_hostile_files_are_skipped_with_reasons(model_dir, tmp_path, capsys):
    good, bad = make_hostile_folder(tmp_path / "wild")
    index = tmp_path / "index"
    summary = _index([str(tmp_path / "wild"), "--index", str(index), "--model", str(model_dir)], capsys)
    reasons = {Path(s["path"]): s["reason"] for s in summary["skipped"]}
    for path, expected in bad.items():
        assert expected in reasons[path], (path, reasons.get(path))
    with ImageIndex.open(index) as opened:
        for path in good:
            assert opened.store.file_state(str(path)) is not None, path
    assert summary["indexed"] + summary["relinked"] == len(good)


def test_another_model_is_refused(collection, model_dir, tmp_path, capsys, caplog):
    index = tmp_path / "index"
    _index([str(collection), "--index", str(index), "--model", str(model_dir)], capsys)
    torch.manual_seed(1)
    other = MModalModel(tiny_config(), MModalModel.from_pretrained(model_dir).tokenizer)
    other.save_pretrained(tmp_path / "other")
    assert main(["search", "a red circle", "--index", str(index), "--model", str(tmp_path / "other")]) == 1
    assert main(["index", str(collection), "--index", str(index), "--model", str(tmp_path / "other")]) == 1
    assert "was built with model 'tiny'" in caplog.text


def test_near_duplicates_are_found(collection, model_dir, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for src in sorted(collection.iterdir())[:20]:
        shutil.copy(src, photos / src.name)
    png = next(p for p in sorted(photos.iterdir()) if p.suffix == ".png")
    Image.open(png).save(photos / "same-pixels.bmp")  # other bytes, same picture
    index = tmp_path / "index"
    _index([str(photos), "--index", str(index), "--model", str(model_dir)], capsys)
    assert main(["dedup", "--index", str(index), "--threshold", "0.9999", "--json"]) == 0
    groups = json.loads(capsys.readouterr().out)
    assert sorted(map(sorted, groups)) == [sorted([str(png), str(photos / "same-pixels.bmp")])]


@pytest.mark.slow
def test_killed_indexer_resumes_without_duplicates_or_losses(collection, model_dir, tmp_path, capsys):
    photos = _copy(collection, tmp_path / "photos")
    reference = tmp_path / "reference"
    _index([str(photos), "--index", str(reference), "--model", str(model_dir)], capsys)

    index = tmp_path / "index"
    command = [sys.executable, "-m", "mmodal.cli", "index", str(photos), "--index", str(index)]
    command += ["--model", str(model_dir), "--batch-size", "4", "--workers", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    committed = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if (index / METADATA_FILE).exists():
            with sqlite3.connect(index / METADATA_FILE) as db:
                try:
                    committed = db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
                except sqlite3.OperationalError:  # the schema is being created
                    committed = 0
            if committed >= 8:
                break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 0 < committed < 240, "the indexer should have been stopped part-way"

    summary = _index([str(photos), "--index", str(index), "--model", str(model_dir)], capsys)
    assert summary["unchanged"] >= committed and summary["indexed"] + summary["unchanged"] == 240
    with ImageIndex.open(index) as opened:
        assert opened.index.ntotal == opened.store.count() == opened.store.file_count() == 240
        paths = [p for item in opened.store.items(opened.store.ids().tolist()).values() for p in item.paths]
    assert len(paths) == len(set(paths)) == 240
    for query in QUERIES:
        expected = _search(reference, query, capsys)
        got = _search(index, query, capsys)
        assert [r["path"] for r in got] == [r["path"] for r in expected]
        np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in expected], atol=1e-5)


def test_voice_queries_and_bad_query_files(shapes_test_dir, model_dir, tmp_path, capsys, caplog):
    from mmodal.data.dataset import read_dataset

    spoken = [q for q in read_dataset(shapes_test_dir).queries if q.audio]
    if not spoken:
        pytest.skip("espeak-ng is not installed, so the test split has no speech")
    index = tmp_path / "index"
    _index([str(shapes_test_dir / "images"), "--index", str(index), "--model", str(model_dir)], capsys)
    wav = shapes_test_dir / spoken[0].audio
    assert main(["search", "--audio", str(wav), "--index", str(index), "--json", "-k", "5"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 5 and all(r["rerank_score"] is None for r in results)

    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("not a sound")
    assert main(["search", "--audio", str(not_audio), "--index", str(index)]) == 1
    assert f"cannot read {not_audio} as audio" in caplog.text and "give a WAV, MP3" in caplog.text
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert main(["search", "--image", str(broken), "--index", str(index)]) == 1
    assert f"cannot use {broken} as a query image" in caplog.text
    assert main(["search", "--index", str(index)]) == 1
    assert "give a text" in caplog.text
    assert main(["search", " ", "--index", str(index)]) == 1
    assert "empty text" in caplog.text
