"""The semantics module: relations, parsing, relevance, truth and answers, against hand-made scenes."""

import pytest

from mmodal.shapes.scene import Scene, SceneObject, SpecError, holds_relation, relations_between
from mmodal.shapes.semantics import (
    CountPhrase,
    ObjectPhrase,
    Question,
    RelationPhrase,
    Statement,
    normalize_answer,
    parse_question,
    parse_statement,
)


def obj(shape, color, size="small", cx=0.5, cy=0.5):
    return SceneObject(shape=shape, color=color, size=size, cx=cx, cy=cy, d=0.15 if size == "small" else 0.3)


SCENE = Scene(
    128,
    128,
    (
        obj("circle", "red", "large", cx=0.2, cy=0.3),
        obj("square", "blue", "small", cx=0.7, cy=0.35),
        obj("star", "blue", "small", cx=0.75, cy=0.8),
    ),
)


def test_relations_use_the_margin():
    a, b = obj("circle", "red", cx=0.30, cy=0.5), obj("square", "blue", cx=0.45, cy=0.55)
    assert relations_between(a, b) == ("left of",)
    assert relations_between(b, a) == ("right of",)
    close = obj("star", "white", cx=0.39, cy=0.59)
    assert relations_between(a, close) == ()  # within the margin on both axes
    assert holds_relation(SCENE.objects[0], "above", SCENE.objects[2])
    with pytest.raises(SpecError, match="unknown relation"):
        holds_relation(a, "near", b)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a red circle", True),
        ("a large red object", True),
        ("a small red circle", False),
        ("a red circle left of a blue square", True),
        ("a blue square left of a red circle", False),
        ("a blue square above a blue star", True),
        ("two blue objects", True),
        ("three blue objects", False),
        ("one blue object", False),
        ("three objects", True),
        ("a red circle and a blue square", True),
        ("a blue object and a blue object", True),
        ("a blue object, a blue object and a blue object", False),
        ("two blue objects and a red circle", True),
        ("two blue objects and a blue star", False),  # the star is already counted
        ("a green circle", False),
    ],
)
def test_statement_truth(text, expected):
    statement = parse_statement(text)
    assert statement.text() == text
    assert statement.holds(SCENE) is expected


def test_parse_structures_and_kinds():
    s = parse_statement("A  Red circle left of a blue square")
    assert s.parts == (
        RelationPhrase(
            ObjectPhrase(color="red", shape="circle"), "left of", ObjectPhrase(color="blue", shape="square")
        ),
    )
    assert s.kind == "relation"
    assert parse_statement("two stars").parts == (CountPhrase(2, ObjectPhrase(shape="star")),)
    assert parse_statement("a red object").kind == "object"
    assert parse_statement("a small star").kind == "binding"
    assert parse_statement("a red circle and a blue star").kind == "conjunction"
    assert parse_statement("three large objects").kind == "count"
    assert parse_statement("a small purple star").kind == "held_out"
    assert parse_statement("an orange square left of a red star").held_out


@pytest.mark.parametrize("bad", ["", "a red", "a red dog", "a red red circle", "a circle and", "a big circle"])
def test_parse_rejects_text_outside_the_language(bad):
    with pytest.raises(SpecError):
        parse_statement(bad)


@pytest.mark.parametrize(
    "question, answer",
    [
        ("what color is the circle?", "red"),
        ("what color is the small star?", "blue"),
        ("what color is the small object?", None),  # two small objects: not askable
        ("what shape is the red object?", "circle"),
        ("what size is the blue square?", "small"),
        ("how many blue objects are there?", "two"),
        ("how many objects are there?", "three"),
        ("how many green triangles are there?", "zero"),
        ("is there a large red circle?", "yes"),
        ("is there a small red circle?", "no"),
        ("is the red circle left of the blue square?", "yes"),
        ("is the blue square below the blue star?", "no"),
        ("is the blue star below the blue square?", "yes"),
        ("what is right of the red circle?", None),  # both blue objects are
        ("what is below the blue square?", "blue star"),
        ("what is left of the blue square?", "red circle"),
    ],
)
def test_question_answers(question, answer):
    q = parse_question(question)
    assert q.text() == question
    assert q.answer(SCENE) == answer


def test_question_types_and_errors():
    assert parse_question("what is above the blue star?") == Question(
        "query", relation="above", other=ObjectPhrase(color="blue", shape="star")
    )
    with pytest.raises(SpecError, match="matches no question template"):
        parse_question("why is the circle red?")


@pytest.mark.parametrize(
    "raw, normal", [(" Two ", "two"), ("2", "two"), ("the Red Circle.", "red circle"), ("a  yes", "yes"), ("0", "zero")]
)
def test_normalize_answer(raw, normal):
    assert normalize_answer(raw) == normal


def test_scene_round_trip_and_validation():
    assert Scene.from_dict(SCENE.to_dict()) == SCENE
    with pytest.raises(SpecError, match="1 to 4 objects"):
        Scene.from_dict({"width": 64, "height": 64, "objects": []})
    with pytest.raises(SpecError, match="unknown color"):
        Scene.from_dict({"width": 64, "height": 64, "objects": [{**SCENE.to_dict()["objects"][0], "color": "pink"}]})
    with pytest.raises(SpecError, match="malformed scene graph"):
        Scene.from_dict({"width": 64, "objects": []})


def test_statement_text_joins_parts_like_the_spec():
    s = Statement(
        (
            ObjectPhrase("large", "red", "circle"),
            ObjectPhrase("small", "blue", "square"),
            ObjectPhrase(None, "green", "star"),
        )
    )
    assert s.text() == "a large red circle, a small blue square and a green star"
