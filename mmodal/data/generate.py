"""Generates a Shapes dataset folder: images, scene graphs, captions, foils, questions, queries, speech.

Every image and every query draws from its own random stream, seeded by (seed, split, index), so the
output is the same whatever the number of worker processes, and a rerun after a crash rewrites the
same files.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mmodal.data.dataset import (
    CaptionRecord,
    Dataset,
    FoilRecord,
    ImageRecord,
    QueryRecord,
    QuestionRecord,
    write_dataset,
)
from mmodal.indexes.atomic import atomic_open
from mmodal.shapes import question_sampling, speech, text_edits, wording, world
from mmodal.shapes.render import render, sample_style
from mmodal.shapes.scene import HELD_OUT_PAIRS, SPEC_VERSION, Scene
from mmodal.shapes.semantics import QUERY_KINDS, parse_statement
from mmodal.workers import worker_pool

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
_SPLIT_STREAM = {"train": 0, "test": 1}
_IMAGE_STREAM, _QUERY_STREAM, _VOICE_STREAM = 0, 1, 2
JPEG_FRACTION = 0.5
JPEG_QUALITY = (60, 95)
MAX_QUERIES = 2000
SPOKEN_WORDED_SHARE = 0.5  # share of a train split's spoken queries said in people's wording
# How search queries are drawn: 2 draws every phrase form evenly in every position (1 gave relations and
# conjunctions colour and shape on both sides). A test split of another draw is made again by `mmodal eval`.
QUERY_DRAW = 2


def _rng(seed: int, split: str, stream: int, index: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLIT_STREAM[split], stream, index])


def _make_image(root: Path, seed: int, split: str, index: int) -> tuple[ImageRecord, list, list, list]:
    rng = _rng(seed, split, _IMAGE_STREAM, index)
    scene = world.sample_scene(rng, split)
    style = sample_style(scene, rng)
    image = render(scene, style)
    image_id = f"{index:06d}"
    render_info = style.to_dict()
    if rng.random() < JPEG_FRACTION:
        quality = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
        file, render_info["jpeg_quality"] = f"images/{image_id}.jpg", quality
        with atomic_open(root / file, "wb") as f:
            image.save(f, format="JPEG", quality=quality)
    else:
        file = f"images/{image_id}.png"
        with atomic_open(root / file, "wb") as f:
            image.save(f, format="PNG")
    caps = world.captions(scene, rng)
    captions = [CaptionRecord(image_id, s.text(), kind) for kind, s in caps]
    foils = [FoilRecord(image_id, c.text(), f.text(), kind) for kind, c, f in text_edits.foils(scene, caps, split)]
    questions = [
        QuestionRecord(image_id, q.text(), a, q.type) for q, a in question_sampling.questions(scene, rng, split)
    ]
    return ImageRecord(image_id, file, scene, render_info), captions, foils, questions


def _make_images(args: tuple[str, int, str, list[int]]):
    root, seed, split, indices = args
    return [_make_image(Path(root), seed, split, i) for i in indices]


def _make_queries(scenes: list[Scene], ids: list[str], seed: int, split: str, n_queries: int) -> list[QueryRecord]:
    # Kinds with few distinct texts first, so that what they cannot fill goes to the rich ones.
    kinds = [k for k in ("object", "held_out", "count", "binding", "relation", "conjunction") if k in QUERY_KINDS]
    if split == "train":
        kinds.remove("held_out")
    if split != "train" and not any((o.color, o.shape) in HELD_OUT_PAIRS for s in scenes for o in s.objects):
        kinds.remove("held_out")
    rng = _rng(seed, split, _QUERY_STREAM)
    texts: dict[str, object] = {}
    # Equal shares per kind; a kind with few distinct texts (single attributes) passes its rest on.
    for position, kind in enumerate(kinds):
        quota = (n_queries - len(texts)) // (len(kinds) - position)
        found = 0
        for _ in range(quota * 30):
            if found >= quota:
                break
            statement = world.query_for(kind, scenes[int(rng.integers(len(scenes)))], rng)
            if statement is not None and statement.text() not in texts:
                texts[statement.text()] = statement
                found += 1
    queries = []
    for k, (text, statement) in enumerate(tqdm(texts.items(), desc="relevance", unit="query", leave=False)):
        relevant = [image_id for image_id, scene in zip(ids, scenes) if statement.holds(scene)]
        queries.append(QueryRecord(id=f"q{k:05d}", text=text, relevant=relevant, kind=statement.kind))
    return queries


def _speak(args: tuple[str, int, str, int, str]) -> tuple[str, dict, str | None]:
    root, seed, split, index, text = args
    rng = _rng(seed, split, _VOICE_STREAM, index)
    voice = speech.sample_voice(rng, split)
    # Training speech says half its queries as people word them ("show me two red circles"), so that spoken
    # wordings are heard; a test split says each query as it is written, to compare spoken with typed search.
    transcript = None
    if split == "train" and rng.random() < SPOKEN_WORDED_SHARE:
        transcript = speech.heard_words(wording.word_statement(parse_statement(text), rng).text)
    file = f"audio/q{index:05d}.wav"
    with atomic_open(Path(root) / file, "wb") as f:
        speech.write_wav(f, speech.synthesize(transcript or text, voice))
    return file, voice.to_dict(), transcript


def generate_shapes(
    out: str | os.PathLike,
    n: int,
    seed: int,
    split: str,
    with_speech: bool = False,
    n_queries: int | None = None,
    workers: int | None = None,
) -> Dataset:
    """Writes a Shapes dataset of ``n`` images to ``out`` and returns it.

    Args:
        out: folder to write (created; existing generated files are overwritten).
        n: number of images.
        seed: random seed; the same (seed, split, n) always gives the same dataset.
        split: "train" (never shows the held-out colour–shape pairs) or "test".
        with_speech: also speak every query to a 16 kHz WAV (espeak-ng or flite).
        n_queries: number of distinct search queries (default: half the images, at most 2,000).
        workers: worker processes (default: all cores).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    if with_speech:
        speech.require_synthesizers()
    root = Path(out)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for leftover in [*root.glob(".*.partial"), *root.glob("*/.*.partial")]:
        leftover.unlink()  # temporary files of a run that was killed mid-write
    workers = workers or os.cpu_count() or 1
    n_queries = n_queries if n_queries is not None else max(6, min(MAX_QUERIES, n // 2))
    chunks = [list(range(i, min(n, i + 32))) for i in range(0, n, 32)]
    dataset = Dataset(root=root)
    with worker_pool(workers, ["mmodal.data.generate"]) as pool:
        jobs = pool.map(_make_images, [(str(root), seed, split, c) for c in chunks])
        with tqdm(total=n, desc=f"shapes {split}", unit="img") as bar:
            for results in jobs:
                for image, captions, foils, questions in results:
                    dataset.images.append(image)
                    dataset.captions.extend(captions)
                    dataset.foils.extend(foils)
                    dataset.questions.extend(questions)
                bar.update(len(results))
        scenes = [r.scene for r in dataset.images]
        dataset.queries = _make_queries(scenes, [r.id for r in dataset.images], seed, split, n_queries)
        if with_speech:
            (root / "audio").mkdir(exist_ok=True)
            jobs = [(str(root), seed, split, int(q.id[1:]), q.text) for q in dataset.queries]
            spoken = pool.map(_speak, jobs, chunksize=8)
            for query, said in zip(dataset.queries, tqdm(spoken, total=len(jobs), desc="speech", unit="wav")):
                query.audio, query.voice, query.transcript = said
    dataset.info = {
        "world": "shapes",
        "spec_version": SPEC_VERSION,
        "split": split,
        "seed": seed,
        "n_images": n,
        "speech": with_speech,
        "held_out_pairs": sorted([c, s] for c, s in HELD_OUT_PAIRS),
        "query_draw": QUERY_DRAW,
        "counts": {
            "images": len(dataset.images),
            "captions": len(dataset.captions),
            "foils": len(dataset.foils),
            "questions": len(dataset.questions),
            "queries": len(dataset.queries),
        },
    }
    write_dataset(dataset)
    log.info("wrote %d images and %d queries to %s", n, len(dataset.queries), root)
    return dataset
