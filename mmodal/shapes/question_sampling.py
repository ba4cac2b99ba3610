"""Samples Shapes questions: questions of a scene with their answers, count questions with a chosen answer,
and questions of the whole question grammar, of no scene in particular."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from mmodal.shapes.scene import RELATIONS, Scene, SceneObject, relations_between
from mmodal.shapes.semantics import QUESTION_TYPES, ObjectPhrase, Question
from mmodal.shapes.world import random_phrase


def _referring_phrase(
    obj: SceneObject, scene: Scene, keep: tuple[str, ...], rng, allow_size: bool = True
) -> ObjectPhrase | None:
    """A phrase naming ``keep`` attributes (plus size when allowed and needed) that picks only ``obj``."""
    base = ObjectPhrase(**{k: getattr(obj, k) for k in keep})
    candidates = [base, replace(base, size=obj.size)] if allow_size and "size" not in keep else [base]
    if rng.random() < 0.3:
        candidates.reverse()
    for phrase in candidates:
        if [o for o in scene.objects if phrase.matches(o)] == [obj]:
            return phrase
    return None


# The attributes that each question type's phrases name. A referring phrase (colour, shape, size and relation
# questions) names the first and adds the size where a scene needs it to pick one object.
QUESTION_PHRASES = {
    "color": (("shape",), ("size", "shape")),
    "shape": (("color",), ("size", "color")),
    "size": (("color", "shape"),),
    "count": (("color", "shape"), ("shape",), ("color",), ()),
    "exist": (("color", "shape"), ("size", "color", "shape"), ("size", "shape")),
    "relation": (("color", "shape"), ("size", "color", "shape")),
    "query": (("color", "shape"), ("size", "color", "shape")),
}


def question_of_type(qtype: str, scene: Scene, rng, split: str) -> Question | None:
    objs = scene.objects
    obj = objs[int(rng.integers(len(objs)))]
    if qtype in ("color", "shape", "size"):
        keep = QUESTION_PHRASES[qtype][0]
        # A size question must not name the size it asks for.
        phrase = _referring_phrase(obj, scene, keep, rng, allow_size=qtype != "size")
        return Question(qtype, phrase) if phrase else None
    if qtype == "count":
        attributes = QUESTION_PHRASES["count"][int(rng.integers(len(QUESTION_PHRASES["count"])))]
        source = obj if rng.random() < 0.7 else None
        phrase = (
            ObjectPhrase(**{k: getattr(obj, k) for k in attributes})
            if source
            else random_phrase(rng, split, attributes)
        )
        return Question("count", phrase)
    if qtype == "exist":
        attributes = QUESTION_PHRASES["exist"][int(rng.integers(len(QUESTION_PHRASES["exist"])))]
        if rng.random() < 0.5:
            return Question("exist", ObjectPhrase(**{k: getattr(obj, k) for k in attributes}))
        return Question("exist", random_phrase(rng, split, attributes))
    others = [o for o in objs if o is not obj]
    if not others:
        return None
    other = others[int(rng.integers(len(others)))]
    a = _referring_phrase(obj, scene, ("color", "shape"), rng)
    b = _referring_phrase(other, scene, ("color", "shape"), rng)
    if a is None or b is None:
        return None
    if qtype == "relation":
        return Question("relation", a, RELATIONS[int(rng.integers(len(RELATIONS)))], b)
    rels = relations_between(obj, other)
    return Question("query", relation=rels[int(rng.integers(len(rels)))], other=b) if rels else None


def count_question(scene: Scene, count: int, rng: np.random.Generator, split: str) -> Question | None:
    """A count question of the grammar whose answer in ``scene`` is ``count``, or None when the scene has none:
    the rarer counts (three or four of a kind) are rare among questions drawn at random."""
    if count == 0:
        named = [attributes for attributes in QUESTION_PHRASES["count"] if attributes]  # "objects" counts all
        phrase = random_phrase(rng, split, named[int(rng.integers(len(named)))])
        return Question("count", phrase) if not any(phrase.matches(o) for o in scene.objects) else None
    candidates = []
    for attributes in QUESTION_PHRASES["count"]:
        for o in scene.objects:
            phrase = ObjectPhrase(**{k: getattr(o, k) for k in attributes})
            right = sum(phrase.matches(other) for other in scene.objects) == count
            if right and not (split == "train" and phrase.held_out) and phrase not in candidates:
                candidates.append(phrase)
    return Question("count", candidates[int(rng.integers(len(candidates)))]) if candidates else None


def any_question(rng: np.random.Generator, split: str) -> Question:
    """A question drawn from the whole question grammar, of no scene in particular: every type, relation and
    phrase equally often, legal for ``split``. What a question reader must learn to read."""
    qtype = QUESTION_TYPES[int(rng.integers(len(QUESTION_TYPES)))]

    def phrase() -> ObjectPhrase:
        choices = QUESTION_PHRASES[qtype]
        return random_phrase(rng, split, choices[int(rng.integers(len(choices)))])

    if qtype in ("relation", "query"):
        relation = RELATIONS[int(rng.integers(len(RELATIONS)))]
        return Question(qtype, phrase() if qtype == "relation" else None, relation, phrase())
    return Question(qtype, phrase())


def questions(scene: Scene, rng: np.random.Generator, split: str) -> list[tuple[Question, str]]:
    """One question per type where the scene allows one, with its answer."""
    out = []
    for qtype in QUESTION_TYPES:
        for _ in range(4):
            q = question_of_type(qtype, scene, rng, split)
            answer = q.answer(scene) if q else None
            if answer is not None and (split != "train" or not q.held_out):
                out.append((q, answer))
                break
    return out
