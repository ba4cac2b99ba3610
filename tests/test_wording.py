"""People's wording: every worded text means what its statement or question means, in every scene."""

import numpy as np

from mmodal.shapes import wording, world
from mmodal.shapes.semantics import RELATIONS, Question, RelationPhrase, Statement


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
        question = world.any_question(rng, "test")
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
            wording.word_question(world.any_question(rng, "test"), rng).text,
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
