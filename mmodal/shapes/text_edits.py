"""Texts made by changing another text: foils (a true caption that one swap makes false of its scene) and
one-word changes (a statement or question with one attribute word changed)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from mmodal.shapes.scene import COLORS, INVERSE_RELATION, MAX_OBJECTS, SHAPES, SIZES, Scene
from mmodal.shapes.semantics import PHRASE_ATTRIBUTES, CountPhrase, ObjectPhrase, Question, RelationPhrase, Statement

FOIL_KINDS = ("color_swap", "relation_swap", "count_change")


# ---------------------------------------------------------------------------------------------- foils


def _color_swaps(statement: Statement):
    parts = list(statement.parts)
    slots = [(i, j) for i, p in enumerate(parts) for j, op in enumerate(_phrases(p)) if op.color is not None]
    for x in range(len(slots)):
        for y in range(x + 1, len(slots)):
            (i1, j1), (i2, j2) = slots[x], slots[y]
            c1, c2 = _phrases(parts[i1])[j1].color, _phrases(parts[i2])[j2].color
            if c1 == c2:
                continue
            new = list(parts)
            new[i1] = _with_color(new[i1], j1, c2)
            new[i2] = _with_color(new[i2], j2, c1)
            yield Statement(tuple(new))


def _phrases(part) -> tuple[ObjectPhrase, ...]:
    if isinstance(part, RelationPhrase):
        return (part.subject, part.other)
    return (part.phrase,) if isinstance(part, CountPhrase) else (part,)


def _with_color(part, slot: int, color: str):
    if isinstance(part, RelationPhrase):
        field = "subject" if slot == 0 else "other"
        return replace(part, **{field: replace(getattr(part, field), color=color)})
    if isinstance(part, CountPhrase):
        return replace(part, phrase=replace(part.phrase, color=color))
    return replace(part, color=color)


def _relation_swaps(statement: Statement):
    for i, part in enumerate(statement.parts):
        if isinstance(part, RelationPhrase):
            new = list(statement.parts)
            new[i] = replace(part, relation=INVERSE_RELATION[part.relation])
            yield Statement(tuple(new))


def _count_changes(statement: Statement):
    for i, part in enumerate(statement.parts):
        if isinstance(part, CountPhrase):
            for count in (part.count + 1, part.count - 1):
                if 1 <= count <= MAX_OBJECTS:
                    new = list(statement.parts)
                    new[i] = replace(part, count=count)
                    yield Statement(tuple(new))


_FOIL_MAKERS = {"color_swap": _color_swaps, "relation_swap": _relation_swaps, "count_change": _count_changes}


def foils(scene: Scene, caps: list[tuple[str, Statement]], split: str) -> list[tuple[str, Statement, Statement]]:
    """At most one foil per kind: (kind, true caption, foil) where the spec's semantics make the foil false."""
    out = []
    for kind in FOIL_KINDS:
        found = next(
            (
                (kind, caption, foil)
                for _, caption in caps
                for foil in _FOIL_MAKERS[kind](caption)
                if not foil.holds(scene) and (split != "train" or not foil.held_out)
            ),
            None,
        )
        if found:
            out.append(found)
    return out


# ----------------------------------------------------------------------------------- one-word changes


def one_word_changed(statement: Statement, rng: np.random.Generator, split: str) -> Statement | None:
    """``statement`` with one attribute word of one phrase changed to another value legal for ``split``, or None
    when it has nothing to change. The two texts differ in that one word."""
    phrases = statement.object_phrases()
    for _ in range(8):
        phrase = phrases[int(rng.integers(len(phrases)))]
        named = [a for a in PHRASE_ATTRIBUTES if getattr(phrase, a) is not None]
        if not named:
            continue
        attribute = named[int(rng.integers(len(named)))]
        values = {"size": SIZES, "color": tuple(COLORS), "shape": SHAPES}[attribute]
        value = values[int(rng.integers(len(values)))]
        changed = replace(phrase, **{attribute: value})
        if value == getattr(phrase, attribute) or (split == "train" and changed.held_out):
            continue
        return Statement(tuple(_with_phrase(part, phrase, changed) for part in statement.parts))
    return None


def question_word_changed(question: Question, rng: np.random.Generator, split: str) -> Question | None:
    """``question`` with one attribute word of one of its phrases changed to another value legal for ``split``,
    or None when it has nothing to change (what the statement version does, for questions)."""
    phrases = question.object_phrases()
    if not phrases:
        return None
    changed = one_word_changed(Statement(phrases), rng, split)
    if changed is None:
        return None
    new = dict(zip(map(id, phrases), changed.parts))
    target = new.get(id(question.target), question.target) if question.target is not None else None
    other = new.get(id(question.other), question.other) if question.other is not None else None
    return replace(question, target=target, other=other)


def _with_phrase(part, old: ObjectPhrase, new: ObjectPhrase):
    if isinstance(part, ObjectPhrase):
        return new if part is old else part
    if isinstance(part, CountPhrase):
        return replace(part, phrase=new) if part.phrase is old else part
    return replace(
        part, subject=new if part.subject is old else part.subject, other=new if part.other is old else part.other
    )
