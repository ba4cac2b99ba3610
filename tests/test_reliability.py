"""Hostile inputs, a fast sample of `python -m reliability.fuzz`: through the CLI and the running app's HTTP API,
every case is answered or refused with mmodal's own message, nothing hangs, and the app's answers stay the same."""

from __future__ import annotations

import pytest

from mmodal.indexes.collection import ImageIndex
from reliability.crashes import AIMED, run_trials
from reliability.fuzz import Tally, cli_cases, http_cases, index_hostile_folder
from reliability.hostile import AUDIO_KINDS, IMAGE_KINDS, write_audio_files, write_image_files


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    images = write_image_files(root / "images", 3 * len(IMAGE_KINDS), seed=3)
    clips = write_audio_files(root / "clips", tuple(k for k in AUDIO_KINDS if k != "hour_long"))
    return root, images, clips


@pytest.mark.slow
def test_hostile_files_through_the_cli(hostile):
    root, images, clips = hostile
    tally = Tally()
    summary = index_hostile_folder(images, root / "images", root / "index", tally)
    assert not tally.failures, tally.failures
    usable = sum(case.usable is True and "\udcff" not in str(case.path) for case in images)
    assert summary["indexed"] >= usable
    with ImageIndex.open(root / "index") as index:
        assert index.count() == summary["images_in_index"] == summary["indexed"]
    cli_cases(root / "index", images, clips, 4, tally)
    assert not tally.failures, tally.failures
    assert tally.outcomes[("cli", "empty", "refused")] == 1  # the first text case is the empty text


@pytest.mark.slow
def test_hostile_requests_through_the_http_api(served, hostile):
    _, url, _ = served
    _, images, clips = hostile
    tally = Tally()
    same = http_cases(url, images, clips, 120, tally)
    assert not tally.failures, tally.failures
    assert same, "the app answered the reference search differently after the hostile requests"
    assert sum(n for (_, _, outcome), n in tally.outcomes.items() if outcome == "refused") >= 30


@pytest.mark.slow
def test_killed_while_saving_faiss_or_committing_sqlite_the_indexer_resumes_whole(shapes_test_dir, dataset, tmp_path):
    queries = [q.text for q in dataset.queries[:3]]
    result = run_trials(shapes_test_dir / "images", tmp_path, list(AIMED), queries)
    assert result["killed"] == len(AIMED), result["detail"]
    assert result["whole_after_resume"] == len(AIMED), result["detail"]
    assert result["images"] == len(dataset.images)
