"""Samples Shapes scenes and the statements about them: captions of a scene, search queries a scene satisfies,
and statements of the whole query grammar; with the phrase draws, legal for a split, that the other samplers share.
"""

from __future__ import annotations

import math

import numpy as np

from mmodal.shapes.scene import (
    COLORS,
    HELD_OUT_PAIRS,
    INVERSE_RELATION,
    MAX_OBJECTS,
    RELATIONS,
    SHAPES,
    SIZE_RANGES,
    SIZES,
    Scene,
    SceneObject,
    relations_between,
)
from mmodal.shapes.semantics import (
    COUNT_WORDS,
    PHRASE_FORMS,
    QUERY_KINDS,
    CountPhrase,
    ObjectPhrase,
    RelationPhrase,
    Statement,
)

MIN_CANVAS, MAX_CANVAS = 64, 256
NON_SQUARE_FRACTION = 0.2
MAX_ASPECT = 1.4
PLACEMENT_TRIES = 200


def allowed_pairs(split: str) -> list[tuple[str, str]]:
    """Colour–shape pairs a split may show: the train split never shows the held-out pairs."""
    pairs = [(c, s) for c in COLORS for s in SHAPES]
    return [p for p in pairs if p not in HELD_OUT_PAIRS] if split == "train" else pairs


def random_phrase(rng, split: str, attributes: tuple[str, ...]) -> ObjectPhrase:
    """A phrase naming ``attributes`` of a colour–shape pair and size drawn at random, legal for ``split``."""
    while True:
        color, shape = allowed_pairs(split)[int(rng.integers(len(allowed_pairs(split))))]
        full = {"color": color, "shape": shape, "size": SIZES[int(rng.integers(2))]}
        phrase = ObjectPhrase(**{k: full[k] for k in attributes})
        if split != "train" or not phrase.held_out:
            return phrase


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
    return random_phrase(rng, split, () if form == "object" else tuple(form.split("+")))


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
