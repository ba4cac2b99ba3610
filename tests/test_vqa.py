"""Visual question answering: answers from object slots, the MoE core as decoder, confidence, answer maps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmodal.cli import main
from mmodal.encoders.errors import TowerInputError
from mmodal.evaluate_questions import expected_calibration_error

COLOURS = {"red": (220, 40, 40), "blue": (50, 90, 230), "green": (40, 180, 60), "white": (245, 245, 245)}
QUESTION = "what color is the square?"


def _picture(colour: tuple[int, int, int], size=(48, 40)) -> Image.Image:
    image = Image.new("RGB", size, (20, 20, 20))
    image.paste(colour, (10, 8, 30, 28))
    return image


@pytest.fixture(scope="module")
def pictures():
    """Four pictures of one square each, in four colours, drawn outside the Shapes generator."""
    return [_picture(c) for c in COLOURS.values()]


def test_the_shipped_model_names_the_colour_of_a_square_it_never_saw(model, pictures):
    answers = model.ask(pictures, [QUESTION] * len(pictures))
    assert [a.answer for a in answers] == list(COLOURS)
    assert all(0.9 < a.confidence <= 1.0 for a in answers)
    for a in answers:
        assert all(0 <= c <= a.confidence for _, c in a.alternatives)
        assert a.answer not in [alt for alt, _ in a.alternatives]
        assert len(a.looked_at) == 1 and a.looked_at[0]["weight"] > 0.3  # the one square
        square = a.looked_at[0]
        assert abs(square["cx"] - 20 / 48) < 0.08 and abs(square["cy"] - 18 / 40) < 0.08


def test_generation_is_deterministic(model, pictures):
    first = [a.to_dict() for a in model.ask(pictures, [QUESTION] * len(pictures))]
    second = [a.to_dict() for a in model.ask(pictures, [QUESTION] * len(pictures))]
    assert first == second


def test_bad_questions_get_clear_errors_or_low_confidence(model, pictures):
    with pytest.raises(TowerInputError, match="empty text"):
        model.ask(pictures[:1], ["  "])
    with pytest.raises(TowerInputError, match="too long"):
        model.ask(pictures[:1], ["what " * 2000])
    foreign = model.ask(pictures[:1], ["この四角は何色ですか?"])[0]
    known = model.ask(pictures[:1], [QUESTION])[0]
    assert 0.0 <= foreign.confidence < 0.5 < known.confidence, (foreign, known)
    assert "does not know the words" in foreign.note and known.note is None
    # A made-up word costs confidence, and is named.
    garbled = model.ask(pictures[:1], [QUESTION.replace("square", "qzxv")])[0]
    assert garbled.confidence < known.confidence and "qzxv" in garbled.note


def test_ask_command_prints_json_and_writes_the_answer_map(pictures, tmp_path, capsys, caplog):
    picture = tmp_path / "blue.png"
    pictures[1].save(picture)
    boxes = tmp_path / "map.png"
    argv = ["ask", str(picture), QUESTION, "--model", "shapes", "--json", "--explain", str(boxes)]
    assert main(argv) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["answer"] == "blue" and set(answer) == {"answer", "confidence", "alternatives", "looked_at"}
    with Image.open(boxes) as drawn:
        assert drawn.size == pictures[1].size
        changed = np.argwhere(np.abs(np.asarray(drawn, int) - np.asarray(pictures[1], int)).sum(-1) > 0)
    # the box is drawn around the square: what changed surrounds its centre (x 20, y 18)
    (top, left), (bottom, right) = changed.min(0), changed.max(0)
    assert left < 20 < right and top < 18 < bottom
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really")
    assert main(["ask", str(broken), QUESTION, "--model", "shapes"]) == 1
    assert f"cannot answer about {broken}" in caplog.text


def test_expected_calibration_error():
    confidence = np.array([0.9] * 10 + [0.3] * 10)
    calibrated = np.array([1] * 9 + [0] + [1] * 3 + [0] * 7, dtype=float)
    assert expected_calibration_error(confidence, calibrated) == pytest.approx(0.0, abs=1e-9)
    always_wrong = np.zeros(20)
    assert expected_calibration_error(confidence, always_wrong) == pytest.approx(0.6)


# ------------------------------------------------------------------------------- answers from object slots


def _reading(reasoner_config, question_type: str, a: dict, b: dict | None = None, relation: str | None = None):
    """Reader logits (one row) that read exactly this: the type, phrases a and b, the relation."""
    from mmodal.shapes.semantics import QUESTION_TYPES

    big = 30.0
    logits = {"question_type": torch.zeros(1, len(QUESTION_TYPES))}
    logits["question_type"][0, QUESTION_TYPES.index(question_type)] = big
    relations = reasoner_config.relations
    logits["relation"] = torch.zeros(1, len(relations))
    logits["relation"][0, relations.index(relation or relations[0])] = big
    for role, phrase in (("a", a), ("b", b or {})):
        for name, values in reasoner_config.attributes.items():
            row = torch.zeros(1, len(values) + 1)
            row[0, 0 if name not in phrase else 1 + values.index(phrase[name])] = big
            logits[f"{role}.{name}"] = row
    return logits


def test_slot_evidence_counts_checks_relations_and_reads_the_referent(model):
    """The answer reasoner's soft logic over ground-truth slots of a known scene says what the scene says."""
    from mmodal.fusion.answers import AnswerConfig, AnswerReasoner
    from mmodal.shapes.scene import Scene
    from mmodal.shapes.semantics import QUESTION_TYPES
    from mmodal.training.slots import ground_truth_slots

    scene = Scene.from_dict(
        {
            "width": 128,
            "height": 128,
            "objects": [
                {"shape": "circle", "color": "red", "size": "small", "cx": 0.2, "cy": 0.5, "d": 0.15, "rotation": 0},
                {"shape": "square", "color": "blue", "size": "large", "cx": 0.75, "cy": 0.5, "d": 0.3, "rotation": 0},
                {"shape": "circle", "color": "white", "size": "small", "cx": 0.8, "cy": 0.1, "d": 0.15, "rotation": 0},
            ],
        }
    )
    reasoner = model.reasoner
    layout, n = reasoner.layout, model.config.slots.max_slots
    slots = ground_truth_slots(scene, layout, n, np.random.default_rng(0)).unsqueeze(0)
    answers = AnswerReasoner(AnswerConfig(question_types=QUESTION_TYPES), reasoner.config, 8, 8, 16)
    colors = reasoner.config.attributes["color"]

    def evidence(*args, **kwargs):
        with torch.no_grad():
            return answers.evidence(_reading(reasoner.config, *args, **kwargs), slots, reasoner)

    assert evidence("count", {"shape": "circle"}).count.argmax().item() == 2
    assert evidence("count", {}).count.argmax().item() == 3  # "how many objects"
    assert evidence("exist", {"color": "red", "shape": "circle"}).exists.item() > 0.9
    assert evidence("exist", {"color": "green", "shape": "star"}).exists.item() < 0.1
    left = evidence("relation", {"color": "red", "shape": "circle"}, {"color": "blue", "shape": "square"}, "left of")
    right = evidence("relation", {"color": "red", "shape": "circle"}, {"color": "blue", "shape": "square"}, "right of")
    assert left.holds.item() > 0.8 and right.holds.item() < 0.2
    span = slice(0, len(colors))  # the colour values come first in the attribute readout
    assert colors[int(evidence("color", {"shape": "square"}).subject[0, span].argmax())] == "blue"
    # "what is left of the blue square?": the red circle, not the white one above the square
    query = evidence("query", {}, {"color": "blue", "shape": "square"}, "left of")
    looked = query.looked_at[0, : len(scene.objects)]
    assert colors[int(query.related[0, span].argmax())] == "red" and looked.max() > 0.9


def test_the_shipped_model_answers_from_slots_and_scores_alike_with_or_without_beams(model, dataset):
    """Beam search and the one-answer path score an answer the same way (sharpened, evidence-shifted words)."""
    images = dataset.images_by_id()
    records = [q for q in dataset.questions if q.type in ("query", "count", "color")][:12]
    pictures = [Image.open(dataset.image_path(images[q.image_id])).convert("RGB") for q in records]
    beams = model.ask(pictures, [q.question for q in records], alternatives=2)
    alone = model.ask(pictures, [q.question for q in records], alternatives=0)
    assert sum(a.answer == q.answer for a, q in zip(beams, records)) >= 10
    for b, a in zip(beams, alone):
        assert b.looked_at
        if a.answer == b.answer:
            assert a.confidence == pytest.approx(b.confidence, rel=1e-3)
    assert sum(a.answer == b.answer for a, b in zip(alone, beams)) >= 10


def test_training_questions_take_the_answers_in_turn_as_far_as_the_scenes_allow():
    from collections import Counter

    from mmodal.shapes.question_sampling import count_question
    from mmodal.shapes.semantics import COUNT_WORDS
    from mmodal.shapes.world import sample_scene
    from mmodal.training.questions import draw_questions

    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng, "train") for _ in range(1400)]
    for scene in scenes[:200]:
        for k in range(len(COUNT_WORDS)):
            q = count_question(scene, k, rng, "train")
            assert q is None or (q.answer(scene) == COUNT_WORDS[k] and not q.held_out)
    assert all(count_question(s, len(s.objects), rng, "train") is not None for s in scenes[:200])
    answers = {}
    for start in range(0, len(scenes), 64):
        _, questions, said = draw_questions(scenes[start : start + 64], rng, start)
        for q, a in zip(questions, said):
            answers.setdefault(q.type, Counter())[a] += 1
    for qtype in ("exist", "relation", "size"):
        assert max(answers[qtype].values()) < 0.6 * sum(answers[qtype].values())
    counts = answers["count"]
    assert set(counts) == set(COUNT_WORDS) and counts["one"] < 0.45 * sum(counts.values())
