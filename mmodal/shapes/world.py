"""Samples Shapes scenes and the texts about them: captions, foils, questions and search queries."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from mmodal.shapes.semantics import (
    COLORS,
    COUNT_WORDS,
    HELD_OUT_PAIRS,
    INVERSE_RELATION,
    MAX_OBJECTS,
    PHRASE_ATTRIBUTES,
    PHRASE_FORMS,
    QUERY_KINDS,
    QUESTION_TYPES,
    RELATIONS,
    SHAPES,
    SIZE_RANGES,
    SIZES,
    CountPhrase,
    ObjectPhrase,
    Question,
    RelationPhrase,
    Scene,
    SceneObject,
    Statement,
    relations_between,
)

MIN_CANVAS, MAX_CANVAS = 64, 256
NON_SQUARE_FRACTION = 0.2
MAX_ASPECT = 1.4
PLACEMENT_TRIES = 200
FOIL_KINDS = ("color_swap", "relation_swap", "count_change")


def allowed_pairs(split: str) -> list[tuple[str, str]]:
    """Colour–shape pairs a split may show: the train split never shows the held-out pairs."""
    pairs = [(c, s) for c in COLORS for s in SHAPES]
    return [p for p in pairs if p not in HELD_OUT_PAIRS] if split == "train" else pairs


def sample_scene(rng: np.random.Generator, split: str) -> Scene:
    """A random legal scene: 1–4 non-overlapping objects fully inside a 64–256 px canvas."""
    pairs = allowed_pairs(split)
    while True:
        side = int(rng.integers(MIN_CANVAS, MAX_CANVAS + 1))
        width = height = side
        if rng.random() < NON_SQUARE_FRACTION:
            aspect = math.exp(rng.uniform(-math.log(MAX_ASPECT), math.log(MAX_ASPECT)))
            height = int(np.clip(round(side / aspect), MIN_CANVAS, MAX_CANVAS))
        n_objects = int(rng.integers(1, MAX_OBJECTS + 1))
        objects = _place_objects(rng, pairs, n_objects, width, height)
        if objects is not None:
            return Scene(width=width, height=height, objects=tuple(objects))


def _place_objects(rng, pairs, n_objects: int, width: int, height: int) -> list[SceneObject] | None:
    placed: list[SceneObject] = []
    for _ in range(n_objects):
        color, shape = pairs[int(rng.integers(len(pairs)))]
        size = SIZES[int(rng.integers(len(SIZES)))]
        d = float(round(rng.uniform(*SIZE_RANGES[size]), 4))
        radius_px = d * width / 2
        if 2 * radius_px > height:
            return None
        angle = 0.0 if shape == "circle" else float(round(rng.uniform(0, 360), 1))
        for _ in range(PLACEMENT_TRIES):
            # One pixel of clearance keeps shapes inside the canvas and apart after rounding.
            x = rng.uniform(radius_px + 1, width - radius_px - 1)
            y = rng.uniform(radius_px + 1, height - radius_px - 1)
            if all(math.hypot(x - o.cx * width, y - o.cy * height) > radius_px + o.d * width / 2 + 1 for o in placed):
                placed.append(SceneObject(shape, color, size, round(x / width, 4), round(y / height, 4), d, angle))
                break
        else:
            return None
    return placed


# ------------------------------------------------------------------------------------------- captions


def _full_phrase(obj: SceneObject, rng: np.random.Generator, p_size: float = 0.7) -> ObjectPhrase:
    return ObjectPhrase(size=obj.size if rng.random() < p_size else None, color=obj.color, shape=obj.shape)


def captions(scene: Scene, rng: np.random.Generator) -> list[tuple[str, Statement]]:
    """Several true captions of the whole scene: a list, relations and counts, as (kind, statement)."""
    objs = list(scene.objects)
    order = rng.permutation(len(objs))
    out = [("list", Statement(tuple(_full_phrase(objs[i], rng) for i in order)))]
    pairs = [(a, b, r) for a in objs for b in objs if a is not b for r in relations_between(a, b)]
    for k in rng.permutation(len(pairs))[:2]:
        a, b, r = pairs[k]
        out.append(("relation", Statement((RelationPhrase(_full_phrase(a, rng, 0.4), r, _full_phrase(b, rng, 0.4)),))))
    groups: dict[tuple[str, str], int] = {}
    for o in objs:
        groups[(o.color, o.shape)] = groups.get((o.color, o.shape), 0) + 1
    if max(groups.values()) > 1:
        parts = tuple(
            CountPhrase(n, ObjectPhrase(color=c, shape=s)) if n > 1 else ObjectPhrase(color=c, shape=s)
            for (c, s), n in groups.items()
        )
        out.append(("count", Statement(parts)))
    else:
        out.append(("count", Statement((CountPhrase(len(objs), ObjectPhrase()),))))
    return [(kind, s) for kind, s in out if s.holds(scene)]


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


# ------------------------------------------------------------------------------------------ questions


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


def _random_phrase(rng, split: str, attributes: tuple[str, ...]) -> ObjectPhrase:
    while True:
        color, shape = allowed_pairs(split)[int(rng.integers(len(allowed_pairs(split))))]
        full = {"color": color, "shape": shape, "size": SIZES[int(rng.integers(2))]}
        phrase = ObjectPhrase(**{k: full[k] for k in attributes})
        if split != "train" or not phrase.held_out:
            return phrase


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
            else _random_phrase(rng, split, attributes)
        )
        return Question("count", phrase)
    if qtype == "exist":
        attributes = QUESTION_PHRASES["exist"][int(rng.integers(len(QUESTION_PHRASES["exist"])))]
        if rng.random() < 0.5:
            return Question("exist", ObjectPhrase(**{k: getattr(obj, k) for k in attributes}))
        return Question("exist", _random_phrase(rng, split, attributes))
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
        phrase = _random_phrase(rng, split, named[int(rng.integers(len(named)))])
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
        return _random_phrase(rng, split, choices[int(rng.integers(len(choices)))])

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


# -------------------------------------------------------------------------------------------- queries


def query_for(kind: str, scene: Scene, rng: np.random.Generator) -> Statement | None:
    """A search query of ``kind`` that ``scene`` satisfies, or None when the scene cannot give one.

    Held-out queries take any of the other structures, built around an object of a held-out pair.
    """
    objs = scene.objects
    if kind == "held_out":
        held = [o for o in objs if (o.color, o.shape) in HELD_OUT_PAIRS]
        if not held:
            return None
        focus = held[int(rng.integers(len(held)))]
        structure = ("binding", "binding", "relation", "conjunction", "count")[int(rng.integers(5))]
        query = _query(structure, scene, focus, rng, bound=True)
        return query if query is not None and query.held_out else None
    query = _query(kind, scene, objs[int(rng.integers(len(objs)))], rng, bound=False)
    return None if query is None or query.held_out else query


def phrase_of(obj: SceneObject, form: str) -> ObjectPhrase:
    """The phrase of ``form`` ("color+shape", "size", "object" …) that names ``obj``'s own attributes."""
    return ObjectPhrase(**({} if form == "object" else {a: getattr(obj, a) for a in form.split("+")}))


SINGLE_FORMS = tuple(f for f in PHRASE_FORMS if "+" not in f)  # "object" kind: one attribute named
BINDING_FORMS = tuple(f for f in PHRASE_FORMS if "+" in f)  # "binding" kind: two or three
BOUND_FORMS = ("color+shape", "size+color+shape")  # forms that bind a colour to a shape (held-out pairs)
COUNTED_FORMS = PHRASE_FORMS + ("object",)


def _pick(rng: np.random.Generator, choices):
    return choices[int(rng.integers(len(choices)))]


def _query(kind: str, scene: Scene, obj: SceneObject, rng, bound: bool) -> Statement | None:
    """A true query of ``kind`` about ``obj``, each phrase's form drawn evenly from all the grammar allows (with
    ``bound``, the phrase of ``obj`` binds its colour to its shape)."""
    objs = scene.objects
    focus_forms = BOUND_FORMS if bound else PHRASE_FORMS
    if kind == "object":
        return Statement((phrase_of(obj, _pick(rng, SINGLE_FORMS)),))
    if kind == "binding":
        return Statement((phrase_of(obj, _pick(rng, BOUND_FORMS if bound else BINDING_FORMS)),))
    if kind == "count":
        phrases = [phrase_of(obj, f) for f in (BOUND_FORMS if bound else COUNTED_FORMS)]
        counted = [(sum(p.matches(o) for o in objs), p) for p in phrases]
        several = [c for c in counted if c[0] > 1]
        # Counts of one are the easy case; most count queries ask for two or more when the scene has them.
        pool = several if several and rng.random() < 0.75 else counted
        count, phrase = _pick(rng, pool)
        return Statement((CountPhrase(count, phrase),))
    others = [o for o in objs if o is not obj]
    if not others:
        return None
    other = _pick(rng, others)
    mine, theirs = phrase_of(obj, _pick(rng, focus_forms)), phrase_of(other, _pick(rng, PHRASE_FORMS))
    if kind == "conjunction":
        return Statement((mine, theirs) if rng.random() < 0.5 else (theirs, mine))
    if kind == "relation":
        forward = relations_between(obj, other)
        if not forward:
            return None
        r = _pick(rng, forward)
        if rng.random() < 0.5:
            return Statement((RelationPhrase(mine, r, theirs),))
        return Statement((RelationPhrase(theirs, INVERSE_RELATION[r], mine),))
    raise ValueError(f"unknown query kind {kind!r}; choose from {QUERY_KINDS}")


# ------------------------------------------------------------------------------------- any statement

MAX_STATEMENT_PARTS = 2  # as search queries have


def _any_phrase(rng: np.random.Generator, split: str, allow_bare: bool) -> ObjectPhrase:
    """A phrase of a form drawn evenly (bare "object" only when allowed), legal for ``split``."""
    form = _pick(rng, COUNTED_FORMS if allow_bare else PHRASE_FORMS)
    return _random_phrase(rng, split, () if form == "object" else tuple(form.split("+")))


def any_statement(rng: np.random.Generator, split: str) -> Statement:
    """A statement drawn from the whole query grammar, true of no scene in particular: every structure, count
    and relation equally often, with phrases legal for ``split``. What a query reader must learn to read."""
    parts = []
    for _ in range(int(rng.integers(1, MAX_STATEMENT_PARTS + 1))):
        structure = ("object", "count", "relation")[int(rng.integers(3))]
        if structure == "count":
            count = int(rng.integers(1, len(COUNT_WORDS)))  # the grammar counts from one
            parts.append(CountPhrase(count, _any_phrase(rng, split, allow_bare=True)))
        elif structure == "relation":
            relation = RELATIONS[int(rng.integers(len(RELATIONS)))]
            parts.append(RelationPhrase(_any_phrase(rng, split, False), relation, _any_phrase(rng, split, False)))
        else:
            parts.append(_any_phrase(rng, split, allow_bare=False))
    return Statement(tuple(parts))


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
