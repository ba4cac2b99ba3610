"""What a Shapes scene is (spec v1): the vocabulary of shapes, colours, sizes and relations, scene graphs, and
which relations hold between two objects.

Everything else in the Shapes world builds on these: the meaning of texts (``semantics``), sampling, rendering
and wording.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

SPEC_VERSION = 1
SHAPES = ("circle", "square", "triangle", "star", "hexagon")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (240, 220, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "cyan": (40, 210, 220),
    "white": (245, 245, 245),
}
COLOR_JITTER = 24
SIZES = ("small", "large")
# Bounding diameter as a fraction of the canvas width.
SIZE_RANGES: dict[str, tuple[float, float]] = {"small": (0.12, 0.18), "large": (0.26, 0.36)}
RELATIONS = ("left of", "right of", "above", "below")
INVERSE_RELATION = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
RELATION_MARGIN = 0.10
MAX_OBJECTS = 4
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("purple", "star"), ("yellow", "triangle"), ("cyan", "hexagon"), ("orange", "square"), ("green", "circle")}
)


class SpecError(ValueError):
    """A scene or text that does not follow the Shapes spec."""


def _check_word(word: str, vocabulary, what: str) -> None:
    if word not in vocabulary:
        raise SpecError(f"unknown {what} {word!r}; choose from {', '.join(vocabulary)}")


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene graph; ``cx``, ``cy``, ``d`` are fractions of the width/height."""

    shape: str
    color: str
    size: str
    cx: float
    cy: float
    d: float
    angle: float = 0.0

    def __post_init__(self) -> None:
        _check_word(self.shape, SHAPES, "shape")
        _check_word(self.color, COLORS, "color")
        _check_word(self.size, SIZES, "size")


@dataclass(frozen=True)
class Scene:
    """A scene graph: canvas size and 1 to 4 objects."""

    width: int
    height: int
    objects: tuple[SceneObject, ...]

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        """Builds a scene from its JSON form, raising :class:`SpecError` on anything malformed."""
        try:
            objects = tuple(
                SceneObject(
                    shape=o["shape"],
                    color=o["color"],
                    size=o["size"],
                    cx=float(o["cx"]),
                    cy=float(o["cy"]),
                    d=float(o["d"]),
                    angle=float(o.get("angle", 0.0)),
                )
                for o in data["objects"]
            )
            width, height = int(data["width"]), int(data["height"])
        except (KeyError, TypeError, ValueError) as e:
            raise SpecError(
                f"malformed scene graph ({type(e).__name__}: {e}); expected width, height and objects"
            ) from e
        if not 1 <= len(objects) <= MAX_OBJECTS:
            raise SpecError(f"a scene holds 1 to {MAX_OBJECTS} objects, got {len(objects)}")
        return cls(width=width, height=height, objects=objects)

    def to_dict(self) -> dict:
        """The scene graph's JSON form."""
        return {"width": self.width, "height": self.height, "objects": [asdict(o) for o in self.objects]}


def holds_relation(a: SceneObject, relation: str, b: SceneObject) -> bool:
    """Whether ``a`` stands in ``relation`` to ``b``, with the spec's margin."""
    if relation == "left of":
        return a.cx < b.cx - RELATION_MARGIN
    if relation == "right of":
        return a.cx > b.cx + RELATION_MARGIN
    if relation == "above":
        return a.cy < b.cy - RELATION_MARGIN
    if relation == "below":
        return a.cy > b.cy + RELATION_MARGIN
    raise SpecError(f"unknown relation {relation!r}; choose from {RELATIONS}")


def relations_between(a: SceneObject, b: SceneObject) -> tuple[str, ...]:
    """All relations that ``a`` holds to ``b`` (zero, one or two)."""
    return tuple(r for r in RELATIONS if holds_relation(a, r, b))
