"""People's wording of Shapes texts: a statement or question said the many ways people type it.

The grammar (``semantics``) writes one text per meaning; people write synonyms and inflections ("a big blue
square", "red circles", "2 green objects"), other relation words ("to the left of", "on top of", "beneath"),
a relation said from the other object's side, fillers ("show me …", "pictures with … in it") and other
question forms ("what is the colour of …", "how big is …", "do you see …"). Training reads texts worded here
with the targets of their meaning, so the model learns to read them; nothing at run time rewrites a text.

Each wording comes with its meaning as said: a relation said from the other side is the converse statement
of the grammar ("a blue square right of a red circle"), with the same truth in every scene.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmodal.encoders.tokenizer import WORD
from mmodal.shapes.scene import COLORS, INVERSE_RELATION, SHAPES
from mmodal.shapes.semantics import COUNT_WORDS, CountPhrase, ObjectPhrase, Question, RelationPhrase, Statement

SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}
# A colour said another way now and then: "violet", "red-coloured", "coloured red".
COLOR_NAMES = {"purple": ("purple", "violet")}
COLOR_FORMS = ("{}", "{}", "{}", "{}", "{}", "{}-coloured", "{}-colored")
OBJECT_NOUNS = ("object", "shape", "thing", "item")
# A shape named by an adjective before an object noun: "a round thing", "a star-shaped object".
SHAPE_ADJECTIVES = {
    "circle": ("round", "circular"),
    "square": ("square",),
    "triangle": ("triangular",),
    "star": ("star-shaped",),
    "hexagon": ("hexagonal",),
}
RELATION_WORDS = {
    "left of": ("left of", "to the left of", "on the left of", "on the left side of", "to the left side of"),
    "right of": ("right of", "to the right of", "on the right of", "on the right side of", "to the right side of"),
    "above": ("above", "over", "on top of", "higher than", "higher up than", "atop"),
    "below": ("below", "under", "beneath", "lower than", "underneath", "lower down than"),
}
DIGITS = {word: str(n) for n, word in enumerate(COUNT_WORDS)}
JOINERS = (" and ", " and ", " and ", ", ", " as well as ", " along with ", " together with ", " plus ", " and also ")
# Counts said without their number word: "a single star", "just one circle", "a pair of squares".
COUNT_FORMS = {1: ("a single {}", "just one {}", "only one {}"), 2: ("a pair of {}", "a couple of {}")}
QUERY_FILLERS = (
    "{}",
    "{}",
    "{}",
    "a photo of {}",
    "a picture of {}",
    "an image of {}",
    "photos of {}",
    "images with {}",
    "show me {}",
    "find {}",
    "find me {}",
    "search for {}",
    "looking for {}",
    "pictures with {} in it",
    "images containing {}",
    "i want {}",
    "pics of {}",
    "get me {}",
    "look for {}",
    "a scene with {}",
    "an image that has {}",
    "{} in the picture",
    "{} please",
)
QUESTION_FORMS = {
    "color": (
        "what color is the {t}?",
        "what colour is the {t}?",
        "what is the color of the {t}?",
        "what is the colour of the {t}?",
        "which color is the {t}?",
        "what color does the {t} have?",
        "tell me the colour of the {t}",
        "what's the colour of the {t}?",
        "the {t} is what color?",
        "what color is that {t}?",
    ),
    "shape": (
        "what shape is the {t}?",
        "what is the shape of the {t}?",
        "which shape is the {t}?",
        "what kind of shape is the {t}?",
        "what shape does the {t} have?",
        "what's the shape of the {t}?",
        "the {t} is what shape?",
    ),
    "size": (
        "what size is the {t}?",
        "how big is the {t}?",
        "how large is the {t}?",
        "is the {t} small or large?",
        "is the {t} big or small?",
        "what is the size of the {t}?",
        "is the {t} large or small?",
        "what's the size of the {t}?",
    ),
    "count": (
        "how many {tp} are there?",
        "how many {tp} can you see?",
        "how many {tp} are in the picture?",
        "how many {tp} are in the image?",
        "how many {tp} do you see?",
        "count the {tp}",
        "what is the number of {tp}?",
        "how many {tp}?",
        "how many {tp} can you count?",
    ),
    "exist": (
        "is there {ta}?",
        "do you see {ta}?",
        "can you see {ta}?",
        "are there any {tp}?",
        "is there {ta} in the picture?",
        "does the image contain {ta}?",
        "does the picture have {ta}?",
        "are there {tp}?",
        "do you see any {tp}?",
        "can you find {ta}?",
    ),
    "relation": ("is the {t} {r} the {o}?", "is the {t} {r} the {o}?", "is the {t} located {r} the {o}?"),
    "query": (
        "what is {r} the {o}?",
        "what's {r} the {o}?",
        "which object is {r} the {o}?",
        "which shape is {r} the {o}?",
        "what object is {r} the {o}?",
        "what can you see {r} the {o}?",
        "what lies {r} the {o}?",
        "tell me what is {r} the {o}",
    ),
}


@dataclass(frozen=True)
class Worded:
    """A text as people might type it, and its meaning in the grammar, in the order the text says it."""

    text: str
    meaning: Statement | Question


def _pick(rng: np.random.Generator, choices):
    return choices[int(rng.integers(len(choices)))]


def _plural(noun: str) -> str:
    return noun + ("es" if noun.endswith(("s", "x")) else "s")


def phrase_words(phrase: ObjectPhrase, rng: np.random.Generator, plural: bool = False) -> str:
    """The phrase's words without article, each said one of the ways people say it: "big blue squares",
    "little round thing", "red star-shaped object"."""
    words = []
    if phrase.size is not None:
        words.append(_pick(rng, SIZE_WORDS[phrase.size]))
    if phrase.color is not None:
        words.append(_pick(rng, COLOR_FORMS).format(_pick(rng, COLOR_NAMES.get(phrase.color, (phrase.color,)))))
    if phrase.shape is not None and rng.random() < 0.75:
        noun = phrase.shape
    else:
        if phrase.shape is not None:
            words.append(_pick(rng, SHAPE_ADJECTIVES[phrase.shape]))
        noun = _pick(rng, OBJECT_NOUNS)
    words.append(_plural(noun) if plural else noun)
    return " ".join(words)


def _article(words: str) -> str:
    return "an" if words[0] in "aeiou" else "a"


def _with_article(phrase: ObjectPhrase, rng: np.random.Generator, definite_ok: bool = False) -> str:
    words = phrase_words(phrase, rng)
    if definite_ok and rng.random() < 0.2:
        return "the " + words
    return f"{_article(words)} {words}"


def _number(count: int, rng: np.random.Generator) -> str:
    """The count as people say it before a noun: "2", "three", "exactly four", or a form with "{}" for the noun
    ("a pair of {}")."""
    if count in COUNT_FORMS and rng.random() < 0.2:
        return _pick(rng, COUNT_FORMS[count])
    word = COUNT_WORDS[count]
    said = DIGITS[word] if rng.random() < 0.4 else word
    return ("exactly " + said) if rng.random() < 0.15 else said


def _say_part(part, rng: np.random.Generator) -> tuple[str, object]:
    if isinstance(part, RelationPhrase):
        if rng.random() < 0.5:  # said from the other object's side
            part = RelationPhrase(part.other, INVERSE_RELATION[part.relation], part.subject)
        relation = _pick(rng, RELATION_WORDS[part.relation])
        return f"{_with_article(part.subject, rng)} {relation} {_with_article(part.other, rng, True)}", part
    if isinstance(part, CountPhrase):
        number, words = _number(part.count, rng), phrase_words(part.phrase, rng, plural=part.count != 1)
        return (number.format(words) if "{}" in number else f"{number} {words}"), part
    roll = rng.random()
    if part.shape is None and roll < 0.1:  # "something red", "anything big and blue"
        said = [w for w in phrase_words(part, rng).split()[:-1]]
        if said:
            return f"{_pick(rng, ('something', 'anything'))} {' and '.join(said)}", part
    if roll < 0.3:
        return phrase_words(part, rng, plural=True), part  # "red circles": at least one, as "a red circle"
    if roll < 0.45:
        return phrase_words(part, rng), part
    return _with_article(part, rng), part


def word_statement(statement: Statement, rng: np.random.Generator) -> Worded:
    """``statement`` as people might type a search query for it."""
    said = [_say_part(part, rng) for part in statement.parts]
    texts = [t for t, _ in said]
    if len(texts) <= 2:
        body = _pick(rng, JOINERS).join(texts)
    else:
        body = ", ".join(texts[:-1]) + " and " + texts[-1]
    text = _pick(rng, QUERY_FILLERS).format(body)
    return Worded(_finish(text, rng, "."), Statement(tuple(p for _, p in said)))


def word_question(question: Question, rng: np.random.Generator) -> Worded:
    """``question`` as people might ask it."""
    if question.type == "relation" and rng.random() < 0.5:  # said from the other object's side
        question = Question("relation", question.other, INVERSE_RELATION[question.relation], question.target)
    form = _pick(rng, QUESTION_FORMS[question.type])
    fields = {}
    if question.target is not None:
        fields["t"] = phrase_words(question.target, rng)
        fields["tp"] = phrase_words(question.target, rng, plural=True)
        words = phrase_words(question.target, rng)
        fields["ta"] = f"{_article(words)} {words}"
    if question.other is not None:
        fields["o"] = phrase_words(question.other, rng)
        fields["r"] = _pick(rng, RELATION_WORDS[question.relation])
    return Worded(_finish(form.format(**fields), rng, "?"), question)


def _finish(text: str, rng: np.random.Generator, mark: str) -> str:
    """Capitals and end marks as people type them: the reader must not depend on either."""
    text = text.rstrip("?") if rng.random() < 0.15 else text
    if not text.endswith("?") and rng.random() < 0.15:
        text += mark
    if rng.random() < 0.2:
        text = text[0].upper() + text[1:]
    return text


def vocabulary() -> tuple[str, ...]:
    """Every word a worded text can hold (the grammar's own among them), split as :data:`WORD` splits them."""
    texts = [*COLORS, *SHAPES, *map(_plural, SHAPES), *OBJECT_NOUNS, *map(_plural, OBJECT_NOUNS), *COUNT_WORDS]
    texts += [w for options in SIZE_WORDS.values() for w in options]
    texts += [a for options in SHAPE_ADJECTIVES.values() for a in options]
    texts += [w for options in RELATION_WORDS.values() for w in options] + list(JOINERS) + list(DIGITS.values())
    texts += [n for names in COLOR_NAMES.values() for n in names] + [f.format("") for f in COLOR_FORMS]
    texts += [f.format("") for forms in COUNT_FORMS.values() for f in forms] + ["something anything"]
    texts += ["a an the exactly"] + [f.replace("{}", "") for f in QUERY_FILLERS]
    texts += [f.format(t="", tp="", ta="", o="", r="") for forms in QUESTION_FORMS.values() for f in forms]
    return tuple(sorted({w for t in texts for w in WORD.findall(t.lower())}))
