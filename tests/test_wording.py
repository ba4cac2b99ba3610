"""People's wording: every worded text means what its statement or question means, in every scene."""

import numpy as np
import torch
from PIL import Image

from mmodal.shapes import question_sampling, wording, world
from mmodal.shapes.scene import RELATIONS
from mmodal.shapes.semantics import Question, RelationPhrase, Statement


def test_worded_statements_keep_their_truth_in_every_scene():
    rng = np.random.default_rng(0)
    scenes = [world.sample_scene(rng, "test") for _ in range(60)]
    for _ in range(300):
        statement = world.any_statement(rng, "test")
        worded = wording.word_statement(statement, rng)
        assert isinstance(worded.meaning, Statement)
        assert [worded.meaning.holds(s) for s in scenes] == [statement.holds(s) for s in scenes], worded.text


def test_worded_questions_keep_their_answers():
    rng = np.random.default_rng(1)
    scenes = [world.sample_scene(rng, "test") for _ in range(60)]
    for _ in range(300):
        question = question_sampling.any_question(rng, "test")
        worded = wording.word_question(question, rng)
        assert isinstance(worded.meaning, Question)
        assert [worded.meaning.answer(s) for s in scenes] == [question.answer(s) for s in scenes], worded.text


def test_wordings_vary_and_use_only_the_vocabulary():
    rng = np.random.default_rng(2)
    statement = world.any_statement(rng, "test")
    relation = Statement((RelationPhrase(*statement.object_phrases()[:1], "left of", *statement.object_phrases()[:1]),))
    texts = {wording.word_statement(relation, rng).text.lower() for _ in range(200)}
    assert len(texts) > 50
    assert any("to the left of" in t for t in texts) and any(" right of " in t for t in texts)
    vocabulary = set(wording.vocabulary())
    for _ in range(500):
        for text in (
            wording.word_statement(world.any_statement(rng, "test"), rng).text,
            wording.word_question(question_sampling.any_question(rng, "test"), rng).text,
        ):
            assert set(wording.WORD.findall(text.lower())) <= vocabulary, text
    assert {"big", "tiny", "beneath", "colour", "hexagonal", "2"} <= vocabulary
    assert all(r.split()[0] in vocabulary for r in RELATIONS)


def test_the_paraphrase_set_is_large_and_means_grammar_texts():
    from pathlib import Path

    from mmodal.paraphrase_eval import read_paraphrases

    search, questions = read_paraphrases(Path(__file__).parent.parent / "benchmarks" / "paraphrases")
    assert len(search) >= 100 and len(questions) >= 100
    assert all(p.text.lower() != p.meaning for p in search + questions)


def test_test_queries_cover_every_phrase_form_in_every_position(dataset):
    from mmodal.shapes.semantics import PHRASE_FORMS, RelationPhrase, parse_statement

    relations = [parse_statement(q.text) for q in dataset.queries if q.kind == "relation"]
    relations = [s.parts[0] for s in relations if isinstance(s.parts[0], RelationPhrase)]
    rng = np.random.default_rng(3)
    scenes = [world.sample_scene(rng, "test") for _ in range(400)]
    made = [world.query_for("relation", s, rng) for s in scenes]
    made = [m.parts[0] for m in made if m is not None]
    for position in ("subject", "other"):
        assert {getattr(p, position).form for p in made} == set(PHRASE_FORMS)
    assert relations  # the generated test split asks relations


WORDED_QUERIES = [
    ("show me a big blue square", "a large blue square"),
    ("red circles", "a red circle"),
    ("2 green objects", "two green objects"),
    ("a red circle to the left of a blue square", "a red circle left of a blue square"),
    ("a star beneath a triangle", "a triangle above a star"),
    ("a tiny round thing on top of a large object", "a small circle above a large object"),
    ("pictures with a yellow item and a white hexagonal shape in it", "a yellow object and a white hexagon"),
    ("find 3 stars", "three stars"),
]


def test_the_shipped_model_reads_people_wording_as_the_grammar(model, dataset):
    from mmodal.shapes.semantics import parse_statement

    images = [Image.open(dataset.image_path(r)) for r in dataset.images]
    _, slots = model.encode_image_slots(images)
    parses = model.read_queries([t for pair in WORDED_QUERIES for t in pair])
    agree, right, cells = 0, 0, 0
    for k, (_, meaning) in enumerate(WORDED_QUERIES):
        worded = model.decide(parses[2 * k], slots).probability > 0.5
        grammar = model.decide(parses[2 * k + 1], slots).probability > 0.5
        truth = torch.tensor([parse_statement(meaning).holds(r.scene) for r in dataset.images])
        agree += int((worded == grammar).sum())
        right += int((worded == truth).sum())
        cells += len(truth)
    assert agree / cells >= 0.98 and right / cells >= 0.97


WORDED_QUESTIONS = [
    ("what is the colour of the {t}?", "color", ("shape",)),
    ("how big is the {t}?", "size", ("color", "shape")),
    ("is the {t} small or large?", "size", ("color", "shape")),
    ("how many {tp} can you see?", "count", ("color",)),
    ("do you see a {t}?", "exist", ("color", "shape")),
]


def test_the_shipped_model_answers_people_questions(model, dataset):
    from mmodal.shapes.semantics import ObjectPhrase, Question, normalize_answer

    images, texts, truths = [], [], []
    for record in dataset.images[:40]:
        image = Image.open(dataset.image_path(record)).convert("RGB")
        obj = record.scene.objects[0]
        for form, qtype, attributes in WORDED_QUESTIONS:
            phrase = ObjectPhrase(**{a: getattr(obj, a) for a in attributes})
            truth = Question(qtype, phrase).answer(record.scene)
            if truth is not None:
                images.append(image)
                texts.append(form.format(t=phrase.words(), tp=phrase.words(plural=True)))
                truths.append(truth)
    answers = [a for i in range(0, len(texts), 16) for a in model.ask(images[i : i + 16], texts[i : i + 16], 0)]
    right = sum(normalize_answer(a.answer) == normalize_answer(t) for a, t in zip(answers, truths))
    assert len(texts) >= 100 and right / len(texts) >= 0.95
