"""Property-based tests: the query parser and the dataset readers, fed what hypothesis can think of.

A reader either returns what it was given or refuses with its own error naming the file; it never fails in
another way. The parser reads back every statement and question the spec can say.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mmodal.data.coco import read_coco_captions
from mmodal.data.dataset import (
    CAPTIONS_FILE,
    FOILS_FILE,
    QUERIES_FILE,
    QUESTIONS_FILE,
    DatasetFormatError,
    read_dataset,
)
from mmodal.data.vqa import read_vqa
from mmodal.shapes.scene import COLORS, RELATIONS, SHAPES, SIZES, SpecError
from mmodal.shapes.semantics import (
    COUNT_WORDS,
    CountPhrase,
    ObjectPhrase,
    Question,
    RelationPhrase,
    Statement,
    parse_question,
    parse_statement,
)

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
phrases = st.builds(
    ObjectPhrase,
    size=st.none() | st.sampled_from(SIZES),
    color=st.none() | st.sampled_from(tuple(COLORS)),
    shape=st.none() | st.sampled_from(SHAPES),
)
parts = st.one_of(
    phrases,
    st.builds(CountPhrase, count=st.integers(1, len(COUNT_WORDS) - 1), phrase=phrases),
    st.builds(RelationPhrase, subject=phrases, relation=st.sampled_from(RELATIONS), other=phrases),
)
statements = st.builds(Statement, parts=st.lists(parts, min_size=1, max_size=4).map(tuple))
vocabulary = (
    list(SIZES) + list(COLORS) + list(SHAPES) + list(COUNT_WORDS) + ["a", "an", "the", "and", ",", "object"]
    + [w for r in RELATIONS for w in r.split()] + ["what", "is", "how", "many", "are", "there", "?", "color"]
)  # fmt: skip


# ------------------------------------------------------------------------------------------- parser


@SETTINGS
@given(statements)
def test_every_statement_reads_back(statement):
    assert parse_statement(statement.text()) == statement


@SETTINGS
@given(st.text(max_size=200))
def test_any_text_parses_or_is_refused_by_name(text):
    try:
        parse_statement(text)
    except SpecError as error:
        assert str(error)


@SETTINGS
@given(st.lists(st.sampled_from(vocabulary), max_size=14).map(" ".join))
def test_near_miss_word_salad_parses_or_is_refused(text):
    for parse in (parse_statement, parse_question):
        try:
            parse(text)
        except SpecError as error:
            assert str(error)


questions = st.one_of(
    st.builds(Question, st.sampled_from(("color", "shape", "size", "exist")), phrases),
    st.builds(Question, st.just("count"), phrases),
    st.builds(Question, st.just("relation"), phrases, st.sampled_from(RELATIONS), phrases),
    st.builds(lambda r, o: Question("query", relation=r, other=o), st.sampled_from(RELATIONS), phrases),
)


@SETTINGS
@given(questions)
def test_every_question_reads_back(question):
    assert parse_question(question.text()) == question


# ------------------------------------------------------------------------------------------ readers


def _dataset_folder(root: Path) -> None:
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "images" / "a.png")
    (root / "images.jsonl").write_text(json.dumps({"id": "a", "file": "images/a.png"}) + "\n", encoding="utf-8")


@SETTINGS
@given(
    st.sampled_from((CAPTIONS_FILE, FOILS_FILE, QUESTIONS_FILE, QUERIES_FILE)),
    st.lists(json_values | st.binary(max_size=40), min_size=1, max_size=4),
)
def test_dataset_reader_refuses_any_malformed_record_by_file_and_line(name, lines):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        _dataset_folder(root)
        (root / name).write_bytes(
            b"\n".join(v if isinstance(v, bytes) else json.dumps(v).encode() for v in lines) + b"\n"
        )
        try:
            dataset = read_dataset(root)
        except DatasetFormatError as error:
            assert name in str(error)
        else:
            assert len(dataset.images) == 1


@SETTINGS
@given(json_values, json_values)
def test_vqa_reader_refuses_malformed_files_by_name(questions_data, annotations_data):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        _dataset_folder(root)
        (root / "q.json").write_text(json.dumps(questions_data), encoding="utf-8")
        (root / "a.json").write_text(json.dumps(annotations_data), encoding="utf-8")
        try:
            read_vqa(root / "q.json", root / "a.json", root / "images")
        except DatasetFormatError as error:
            assert "q.json" in str(error) or "a.json" in str(error) or "image" in str(error)


vqa_records = st.lists(
    st.tuples(st.text(min_size=1, max_size=30), st.text(min_size=1, max_size=10)), min_size=1, max_size=6
)


@SETTINGS
@given(vqa_records)
def test_vqa_reader_keeps_every_well_formed_question(pairs):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "images").mkdir()
        Image.new("RGB", (8, 8)).save(root / "images" / "COCO_val2014_000000000042.jpg")
        questions = [{"question_id": i, "image_id": 42, "question": q} for i, (q, _) in enumerate(pairs)]
        annotations = [
            {"question_id": i, "image_id": 42, "multiple_choice_answer": a, "answers": [{"answer": a}]}
            for i, (_, a) in enumerate(pairs)
        ]
        (root / "q.json").write_text(json.dumps({"questions": questions}), encoding="utf-8")
        (root / "a.json").write_text(json.dumps({"annotations": annotations}), encoding="utf-8")
        dataset = read_vqa(root / "q.json", root / "a.json", root / "images")
        assert [(q.question, q.answer) for q in dataset.questions] == list(pairs)


@SETTINGS
@given(json_values)
def test_coco_reader_refuses_malformed_files_by_name(data):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        _dataset_folder(root)
        (root / "captions.json").write_text(json.dumps(data), encoding="utf-8")
        try:
            read_coco_captions(root / "captions.json", root / "images")
        except DatasetFormatError as error:
            assert "captions.json" in str(error)


@SETTINGS
@given(st.lists(st.text(max_size=40).filter(str.strip), min_size=1, max_size=5))
def test_coco_reader_keeps_every_caption(captions):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        _dataset_folder(root)
        data = {
            "images": [{"id": 7, "file_name": "a.png"}],
            "annotations": [{"image_id": 7, "caption": c} for c in captions],
        }
        (root / "captions.json").write_text(json.dumps(data), encoding="utf-8")
        dataset = read_coco_captions(root / "captions.json", root / "images")
        assert [c.text for c in dataset.captions] == [c.strip() for c in captions]
