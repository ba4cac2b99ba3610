"""What a Shapes text means (spec v1): phrases, statements and questions, how they are written and parsed,
and whether a statement holds of a scene or what a question's answer is.

This module is the single source of truth for what a Shapes text means. The generator, training and
evaluation all go through it: a text is parsed into a :class:`Statement` or :class:`Question`, and
``holds`` / ``answer`` evaluate it against a :class:`~mmodal.shapes.scene.Scene`.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from mmodal.shapes.scene import (
    COLORS,
    HELD_OUT_PAIRS,
    SHAPES,
    SIZES,
    Scene,
    SceneObject,
    SpecError,
    holds_relation,
)

COUNT_WORDS = ("zero", "one", "two", "three", "four")
QUESTION_TYPES = ("color", "shape", "size", "count", "exist", "relation", "query")
QUERY_KINDS = ("object", "binding", "relation", "count", "conjunction", "held_out")
PHRASE_ATTRIBUTES = ("size", "color", "shape")  # in the order the grammar writes them
# What an object phrase can name: any non-empty subset of its attributes, or none ("object", counted only).
PHRASE_FORMS = ("size", "color", "shape", "size+color", "size+shape", "color+shape", "size+color+shape")

# -------------------------------------------------------------------------------------------- phrases


@dataclass(frozen=True)
class ObjectPhrase:
    """``a [size] [color] [shape]``; ``shape=None`` is the word "object"."""

    size: str | None = None
    color: str | None = None
    shape: str | None = None

    def matches(self, obj: SceneObject) -> bool:
        """Whether the object has every attribute the phrase names."""
        return (
            (self.size is None or obj.size == self.size)
            and (self.color is None or obj.color == self.color)
            and (self.shape is None or obj.shape == self.shape)
        )

    @property
    def n_attributes(self) -> int:
        """How many of size, colour and shape the phrase names."""
        return sum(x is not None for x in (self.size, self.color, self.shape))

    @property
    def held_out(self) -> bool:
        """Whether the phrase binds one of the held-out colour–shape pairs."""
        return (self.color, self.shape) in HELD_OUT_PAIRS

    @property
    def form(self) -> str:
        """Which attributes the phrase names, in grammar order: "size+color+shape", "shape", or "object"."""
        named = [a for a in PHRASE_ATTRIBUTES if getattr(self, a) is not None]
        return "+".join(named) if named else "object"

    def words(self, plural: bool = False) -> str:
        """The phrase without article: "large red circle", or "large red circles" when plural."""
        noun = self.shape or "object"
        return " ".join(w for w in (self.size, self.color, noun + ("s" if plural else "")) if w)

    def text(self) -> str:
        return "a " + self.words()


@dataclass(frozen=True)
class CountPhrase:
    """``[count] [size] [color] [shape]s``: exactly ``count`` objects match ``phrase``."""

    count: int
    phrase: ObjectPhrase

    def text(self) -> str:
        return f"{COUNT_WORDS[self.count]} {self.phrase.words(plural=self.count != 1)}"


@dataclass(frozen=True)
class RelationPhrase:
    """``<subject> <relation> <other>``: some distinct pair satisfies both phrases and the relation."""

    subject: ObjectPhrase
    relation: str
    other: ObjectPhrase

    def text(self) -> str:
        return f"{self.subject.text()} {self.relation} {self.other.text()}"


Part = ObjectPhrase | CountPhrase | RelationPhrase


def _object_phrases(part: Part) -> tuple[ObjectPhrase, ...]:
    if isinstance(part, ObjectPhrase):
        return (part,)
    if isinstance(part, CountPhrase):
        return (part.phrase,)
    return (part.subject, part.other)


@dataclass(frozen=True)
class Statement:
    """A caption, foil or search query: parts joined by "and", each satisfied by distinct objects."""

    parts: tuple[Part, ...]

    def text(self) -> str:
        texts = [p.text() for p in self.parts]
        return texts[0] if len(texts) == 1 else ", ".join(texts[:-1]) + " and " + texts[-1]

    def object_phrases(self) -> tuple[ObjectPhrase, ...]:
        """Every object phrase in the statement, in reading order."""
        return tuple(p for part in self.parts for p in _object_phrases(part))

    @property
    def held_out(self) -> bool:
        """Whether any phrase binds a held-out colour–shape pair."""
        return any(p.held_out for p in self.object_phrases())

    @property
    def kind(self) -> str:
        """The query kind used for per-kind metrics (held-out pairs take precedence)."""
        if self.held_out:
            return "held_out"
        if len(self.parts) > 1:
            return "conjunction"
        part = self.parts[0]
        if isinstance(part, RelationPhrase):
            return "relation"
        if isinstance(part, CountPhrase):
            return "count"
        return "object" if part.n_attributes <= 1 else "binding"

    @property
    def structure(self) -> str:
        """The statement's phrase structure, for per-structure metrics: each part's kind with the form of each of
        its phrases, e.g. "relation(shape,color+shape)", "count(color)", "object(size) and object(shape)"."""
        return " and ".join(_part_structure(p) for p in self.parts)

    def holds(self, scene: Scene) -> bool:
        """Whether the scene makes the statement true (the image is relevant to the query)."""
        return _assign(self.parts, scene.objects, frozenset())


def _part_structure(part: Part) -> str:
    if isinstance(part, RelationPhrase):
        return f"relation({part.subject.form},{part.other.form})"
    if isinstance(part, CountPhrase):
        return f"count({part.phrase.form})"
    return f"object({part.form})"


def _assign(parts: tuple[Part, ...], objects: tuple[SceneObject, ...], used: frozenset[int]) -> bool:
    """Backtracking search for disjoint sets of objects satisfying each part."""
    if not parts:
        return True
    part, rest = parts[0], parts[1:]
    free = [i for i in range(len(objects)) if i not in used]
    if isinstance(part, ObjectPhrase):
        return any(part.matches(objects[i]) and _assign(rest, objects, used | {i}) for i in free)
    if isinstance(part, CountPhrase):
        matching = frozenset(i for i, o in enumerate(objects) if part.phrase.matches(o))
        return len(matching) == part.count and not (matching & used) and _assign(rest, objects, used | matching)
    return any(
        part.subject.matches(objects[i])
        and part.other.matches(objects[j])
        and holds_relation(objects[i], part.relation, objects[j])
        and _assign(rest, objects, used | {i, j})
        for i, j in itertools.permutations(free, 2)
    )


# ------------------------------------------------------------------------------------------ questions


@dataclass(frozen=True)
class Question:
    """A question of one of the spec's seven types.

    ``target`` is the referring or counted phrase; ``relation`` and ``other`` are used by the
    ``relation`` type ("is the <target> <relation> the <other>?") and the ``query`` type
    ("what is <relation> the <other>?", where ``target`` is unused).
    """

    type: str
    target: ObjectPhrase | None = None
    relation: str | None = None
    other: ObjectPhrase | None = None

    def text(self) -> str:
        t, o = self.target, self.other
        if self.type == "color":
            return f"what color is the {t.words()}?"
        if self.type == "shape":
            return f"what shape is the {t.words()}?"
        if self.type == "size":
            return f"what size is the {t.words()}?"
        if self.type == "count":
            return f"how many {t.words(plural=True)} are there?"
        if self.type == "exist":
            return f"is there {t.text()}?"
        if self.type == "relation":
            return f"is the {t.words()} {self.relation} the {o.words()}?"
        if self.type == "query":
            return f"what is {self.relation} the {o.words()}?"
        raise SpecError(f"unknown question type {self.type!r}; choose from {QUESTION_TYPES}")

    def object_phrases(self) -> tuple[ObjectPhrase, ...]:
        return tuple(p for p in (self.target, self.other) if p is not None)

    @property
    def held_out(self) -> bool:
        return any(p.held_out for p in self.object_phrases())

    def answer(self, scene: Scene) -> str | None:
        """The one true answer, or None when the question is not askable of this scene."""
        objs = scene.objects
        if self.type == "count":
            return COUNT_WORDS[sum(self.target.matches(o) for o in objs)]
        if self.type == "exist":
            return "yes" if any(self.target.matches(o) for o in objs) else "no"
        if self.type == "query":
            anchor = _unique(self.other, objs)
            if anchor is None:
                return None
            found = [o for o in objs if o is not anchor and holds_relation(o, self.relation, anchor)]
            return f"{found[0].color} {found[0].shape}" if len(found) == 1 else None
        referent = _unique(self.target, objs)
        if referent is None:
            return None
        if self.type == "relation":
            anchor = _unique(self.other, objs)
            if anchor is None or anchor is referent:
                return None
            return "yes" if holds_relation(referent, self.relation, anchor) else "no"
        return {"color": referent.color, "shape": referent.shape, "size": referent.size}[self.type]


def _unique(phrase: ObjectPhrase, objects: tuple[SceneObject, ...]) -> SceneObject | None:
    found = [o for o in objects if phrase.matches(o)]
    return found[0] if len(found) == 1 else None


# -------------------------------------------------------------------------------------------- parsing

_ARTICLES = ("a", "an", "the")
_NUMBER_WORDS = COUNT_WORDS + ("five", "six", "seven", "eight", "nine", "ten")
_RELATION_RE = re.compile(r"\s(left of|right of|above|below)\s")


def parse_object_phrase(text: str, plural: bool | None = None) -> ObjectPhrase:
    """Parses "a large red circle", "red object", "stars" (with or without article) into a phrase."""
    words = text.split()
    if words and words[0] in _ARTICLES:
        words = words[1:]
    if not words:
        raise SpecError(f"empty object phrase in {text!r}")
    noun = words[-1]
    if noun.endswith("s") and noun[:-1] in SHAPES + ("object",) and plural is not False:
        noun = noun[:-1]
    if noun not in SHAPES + ("object",):
        raise SpecError(f"object phrase {text!r} must end in a shape or 'object'; shapes: {', '.join(SHAPES)}")
    size = color = None
    for w in words[:-1]:
        if w in SIZES and size is None and color is None:
            size = w
        elif w in COLORS and color is None:
            color = w
        else:
            raise SpecError(f"unexpected word {w!r} in object phrase {text!r}; expected [size] [color] shape")
    return ObjectPhrase(size=size, color=color, shape=None if noun == "object" else noun)


def _parse_part(text: str) -> Part:
    m = _RELATION_RE.search(f" {text} ")
    if m:
        left, right = f" {text} "[: m.start()].strip(), f" {text} "[m.end() :].strip()
        return RelationPhrase(parse_object_phrase(left), m.group(1), parse_object_phrase(right))
    first, _, rest = text.partition(" ")
    if first in COUNT_WORDS[1:]:
        return CountPhrase(COUNT_WORDS.index(first), parse_object_phrase(rest))
    return parse_object_phrase(text)


def normalize_text(text: str) -> str:
    """Lowercase, single spaces, no surrounding spaces."""
    return " ".join(text.lower().split())


def parse_statement(text: str) -> Statement:
    """Parses a caption, foil or query ("a red circle left of a blue square", "two stars and a cube")."""
    text = normalize_text(text)
    if not text:
        raise SpecError("empty text: a statement needs at least one object phrase")
    pieces = [p.strip() for chunk in text.split(", ") for p in chunk.split(" and ")]
    if any(not p for p in pieces):
        raise SpecError(f"empty part in {text!r}")
    return Statement(tuple(_parse_part(p) for p in pieces))


_QUESTION_PATTERNS = (
    ("color", re.compile(r"what colou?r is the (.+)\?")),
    ("shape", re.compile(r"what shape is the (.+)\?")),
    ("size", re.compile(r"what size is the (.+)\?")),
    ("count", re.compile(r"how many (.+) are there\?")),
    ("exist", re.compile(r"is there (an? .+)\?")),
    ("relation", re.compile(r"is the (.+) (left of|right of|above|below) the (.+)\?")),
    ("query", re.compile(r"what is (left of|right of|above|below) the (.+)\?")),
)


def parse_question(text: str) -> Question:
    """Parses a question of one of the spec's templates into a :class:`Question`."""
    text = normalize_text(text)
    for qtype, pattern in _QUESTION_PATTERNS:
        m = pattern.fullmatch(text)
        if not m:
            continue
        if qtype == "relation":
            return Question(qtype, parse_object_phrase(m.group(1)), m.group(2), parse_object_phrase(m.group(3)))
        if qtype == "query":
            return Question(qtype, relation=m.group(1), other=parse_object_phrase(m.group(2)))
        return Question(qtype, parse_object_phrase(m.group(1), plural=True if qtype == "count" else None))
    raise SpecError(f"{text!r} matches no question template; question types: {', '.join(QUESTION_TYPES)}")


def normalize_answer(answer: str) -> str:
    """Scoring normalisation: case, surrounding spaces and punctuation, a leading article, digits."""
    words = normalize_text(answer).strip(" .!?").split()
    if words and words[0] in _ARTICLES:
        words = words[1:]
    return " ".join(_NUMBER_WORDS[int(w)] if w.isdigit() and int(w) < len(_NUMBER_WORDS) else w for w in words)
