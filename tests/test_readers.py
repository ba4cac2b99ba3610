"""Readers: the mmodal folder format, COCO captions and VQAv2, on good and on malformed input."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from mmodal.data.coco import read_coco_captions
from mmodal.data.dataset import DatasetFormatError, read_dataset, write_dataset
from mmodal.data.vqa import read_vqa


def test_generated_dataset_reads_back(shapes_test_dir):
    dataset = read_dataset(shapes_test_dir)
    assert len(dataset.images) == 80
    assert dataset.info["split"] == "test" and dataset.info["format"] == "mmodal-dataset"
    assert dataset.captions and dataset.foils and dataset.questions and dataset.queries
    assert all(r.scene is not None for r in dataset.images)
    assert all(dataset.image_path(r).is_file() for r in dataset.images)


def test_write_then_read_round_trip(shapes_test_dir, tmp_path):
    original = read_dataset(shapes_test_dir)
    copy = tmp_path / "copy"
    shutil.copytree(shapes_test_dir / "images", copy / "images")
    if (shapes_test_dir / "audio").exists():
        shutil.copytree(shapes_test_dir / "audio", copy / "audio")
    original.root = copy
    write_dataset(original)
    again = read_dataset(copy)
    assert again.images == original.images
    assert again.queries == original.queries and again.questions == original.questions


@pytest.fixture
def small_copy(shapes_test_dir, tmp_path):
    target = tmp_path / "ds"
    shutil.copytree(shapes_test_dir, target)
    return target


def _rewrite_line(path, lineno, text):
    lines = path.read_text().splitlines()
    lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n")


def _edit_record(path, lineno, **changes):
    lines = path.read_text().splitlines()
    record = json.loads(lines[lineno - 1])
    for key, value in changes.items():
        if value is ...:
            record.pop(key)
        else:
            record[key] = value
    _rewrite_line(path, lineno, json.dumps(record))


@pytest.mark.parametrize(
    "file, lineno, edit, message",
    [
        ("captions.jsonl", 3, "{not json", r"captions.jsonl:3: not valid JSON"),
        ("captions.jsonl", 2, "[1, 2]", r"captions.jsonl:2: expected a JSON object"),
        ("captions.jsonl", 4, {"text": ...}, r"captions.jsonl:4: missing field 'text'"),
        ("captions.jsonl", 1, {"text": 7}, r"captions.jsonl:1: field 'text' must be str"),
        ("captions.jsonl", 5, {"image_id": "nope"}, r"captions.jsonl:5: image_id 'nope' is not in images.jsonl"),
        ("foils.jsonl", 2, {"extra": 1}, r"foils.jsonl:2: unknown field\(s\) \['extra'\]"),
        ("questions.jsonl", 6, {"answer": None}, r"questions.jsonl:6: field 'answer' must be str"),
        (
            "queries.jsonl",
            1,
            {"relevant": ["000001", "999999"]},
            r"queries.jsonl:1: relevant image id\(s\) \['999999'\]",
        ),
        ("queries.jsonl", 2, {"audio": "audio/missing.wav"}, r"queries.jsonl:2: audio file 'audio/missing.wav'"),
        ("images.jsonl", 3, {"id": "000001"}, r"images.jsonl:3: duplicate image id '000001'"),
        ("images.jsonl", 2, {"file": "../../etc/passwd"}, r"images.jsonl:2: 'file' must be a path inside"),
        (
            "images.jsonl",
            4,
            {"file": "images/none.png"},
            r"images.jsonl:4: image file 'images/none.png' does not exist",
        ),
        (
            "images.jsonl",
            5,
            {"scene": {"width": 64, "height": 64, "objects": []}},
            r"images.jsonl:5: a scene holds 1 to 4",
        ),
        ("images.jsonl", 6, {"id": ...}, r"images.jsonl:6: an image record needs string fields"),
    ],
)
def test_malformed_records_name_file_and_line(small_copy, file, lineno, edit, message):
    path = small_copy / file
    if isinstance(edit, str):
        _rewrite_line(path, lineno, edit)
    else:
        _edit_record(path, lineno, **edit)
    with pytest.raises(DatasetFormatError, match=message):
        read_dataset(small_copy)


def test_missing_folder_files_and_bad_info(small_copy, tmp_path):
    with pytest.raises(DatasetFormatError, match="does not exist"):
        read_dataset(tmp_path / "absent")
    (small_copy / "dataset.json").write_text('{"format": "something-else"}')
    with pytest.raises(DatasetFormatError, match='"format": "mmodal-dataset"'):
        read_dataset(small_copy)
    (small_copy / "dataset.json").write_text('{"format": "mmodal-dataset", "version": 9}')
    with pytest.raises(DatasetFormatError, match="version 9 is not supported"):
        read_dataset(small_copy)
    (small_copy / "dataset.json").unlink()
    (small_copy / "questions.jsonl").write_bytes(b"\xff\xfe garbage\n")
    with pytest.raises(DatasetFormatError, match="questions.jsonl: not UTF-8"):
        read_dataset(small_copy)
    (small_copy / "images.jsonl").unlink()
    with pytest.raises(DatasetFormatError, match="images.jsonl is missing"):
        read_dataset(small_copy)


# ----------------------------------------------------------------------------------------------- COCO


@pytest.fixture
def coco(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in (1, 2):
        Image.new("RGB", (32, 32), (i * 50, 0, 0)).save(images / f"COCO_val2014_{i:012d}.jpg")
    data = {
        "images": [
            {"id": 1, "file_name": "COCO_val2014_000000000001.jpg"},
            {"id": 2, "file_name": "COCO_val2014_000000000002.jpg"},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "caption": "A red square. "},
            {"id": 11, "image_id": 2, "caption": "A darker square"},
            {"id": 12, "image_id": 1, "caption": "Something red"},
        ],
    }
    path = tmp_path / "captions_val2014.json"
    path.write_text(json.dumps(data, indent=1))
    return path, images, data


def test_coco_reads_captions(coco):
    path, images, _ = coco
    dataset = read_coco_captions(path, images)
    assert [r.id for r in dataset.images] == ["1", "2"]
    assert [(c.image_id, c.text) for c in dataset.captions] == [
        ("1", "A red square."),
        ("2", "A darker square"),
        ("1", "Something red"),
    ]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("annotations"), r"expected a list under 'annotations'"),
        (lambda d: d["images"].append(5), r"images\[2\] must be an object"),
        (lambda d: d["images"][1].pop("file_name"), r"images\[1\]: missing field 'file_name'"),
        (lambda d: d["images"][1].update(file_name="gone.jpg"), r"images\[1\]: image file 'gone.jpg' does not exist"),
        (lambda d: d["images"][1].update(id=1), r"images\[1\]: duplicate image id 1"),
        (lambda d: d["annotations"][2].update(image_id=77), r"annotations\[2\]: image_id 77 is not listed"),
        (lambda d: d["annotations"][0].update(caption=["x"]), r"annotations\[0\]: field 'caption' must be str"),
        (lambda d: d["annotations"][1].update(caption="   "), r"annotations\[1\]: empty caption"),
    ],
)
def test_coco_malformed(coco, mutate, message):
    path, images, data = coco
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetFormatError, match=message):
        read_coco_captions(path, images)


def test_coco_broken_json_names_the_line(coco):
    path, images, _ = coco
    path.write_text('{\n "images": [\n  {"id": 1,, }\n ]\n}')
    with pytest.raises(DatasetFormatError, match=r"captions_val2014.json:3: not valid JSON"):
        read_coco_captions(path, images)
    with pytest.raises(DatasetFormatError, match="image folder .* does not exist"):
        read_coco_captions(path, images / "nope")


# ---------------------------------------------------------------------------------------------- VQAv2


@pytest.fixture
def vqa(coco, tmp_path):
    _, images, _ = coco
    questions = {
        "questions": [
            {"question_id": 100, "image_id": 1, "question": "What color is the square?"},
            {"question_id": 101, "image_id": 2, "question": "How many squares are there?"},
        ]
    }
    annotations = {
        "annotations": [
            {
                "question_id": 100,
                "image_id": 1,
                "multiple_choice_answer": "red",
                "answer_type": "other",
                "answers": [{"answer": "red", "answer_id": 1}, {"answer": "dark red", "answer_id": 2}],
            },
            {
                "question_id": 101,
                "image_id": 2,
                "multiple_choice_answer": "1",
                "answer_type": "number",
                "answers": [{"answer": "1", "answer_id": 1}],
            },
        ]
    }
    qpath, apath = tmp_path / "questions.json", tmp_path / "annotations.json"
    qpath.write_text(json.dumps(questions))
    apath.write_text(json.dumps(annotations))
    return qpath, apath, images, questions, annotations


def test_vqa_reads_questions_and_answers(vqa):
    qpath, apath, images, _, _ = vqa
    dataset = read_vqa(qpath, apath, images)
    assert [r.file for r in dataset.images] == ["COCO_val2014_000000000001.jpg", "COCO_val2014_000000000002.jpg"]
    first = dataset.questions[0]
    assert (first.image_id, first.question, first.answer, first.type) == (
        "1",
        "What color is the square?",
        "red",
        "other",
    )
    assert first.answers == ["red", "dark red"]


@pytest.mark.parametrize(
    "target, mutate, message",
    [
        ("q", lambda q, a: q["questions"][1].pop("question"), r"questions\[1\]: missing field 'question'"),
        (
            "q",
            lambda q, a: q["questions"][0].update(question_id="100"),
            r"questions\[0\]: field 'question_id' must be int",
        ),
        ("q", lambda q, a: q["questions"][1].update(question_id=555), r"questions\[1\]: question_id 555 has no entry"),
        ("q", lambda q, a: q["questions"][1].update(image_id=1), r"questions\[1\]: image_id 1 disagrees"),
        ("a", lambda q, a: a["annotations"][0].pop("multiple_choice_answer"), r"annotations\[0\]: missing field"),
        (
            "a",
            lambda q, a: a["annotations"][1]["answers"].append("x"),
            r"annotations\[1\]: answers\[1\] must be an object",
        ),
        (
            "a",
            lambda q, a: a["annotations"].append(dict(a["annotations"][0])),
            r"annotations\[2\]: duplicate annotation",
        ),
        ("a", lambda q, a: a.update(annotations={}), r"expected a list under 'annotations'"),
    ],
)
def test_vqa_malformed(vqa, target, mutate, message):
    qpath, apath, images, questions, annotations = vqa
    mutate(questions, annotations)
    qpath.write_text(json.dumps(questions))
    apath.write_text(json.dumps(annotations))
    with pytest.raises(DatasetFormatError, match=message):
        read_vqa(qpath, apath, images)


def test_vqa_missing_image_and_files(vqa):
    qpath, apath, images, _, _ = vqa
    (images / "COCO_val2014_000000000002.jpg").unlink()
    with pytest.raises(DatasetFormatError, match=r"questions\[1\]: no image numbered 2"):
        read_vqa(qpath, apath, images)
    apath.unlink()
    with pytest.raises(DatasetFormatError, match="annotations.json does not exist"):
        read_vqa(qpath, apath, images)
