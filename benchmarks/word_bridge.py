"""Would a word bridge help? For words the `shapes` model does not know, the nearest word it knows by the packaged
MiniLM sentence encoder, beside the word a person means (or "-" where the Shapes world has no such thing and the
word should stay unknown). Prints the table and how often the nearest known word is the meant one.

    python benchmarks/word_bridge.py
"""

from __future__ import annotations

import torch

from mmodal.encoders.sentence import SentenceEncoder, minilm_folder
from mmodal.shapes.scene import COLORS, SHAPES, SIZES
from mmodal.shapes.semantics import COUNT_WORDS

# The words a bridge could map onto: the attribute, count and relation words of the Shapes world.
TARGETS = (*COLORS, *SHAPES, "object", *SIZES, "left", "right", "above", "below", *COUNT_WORDS[1:])
# An unknown word and what a person means by it in a Shapes query ("-": nothing the world has).
PROBES = {
    "crimson": "red",
    "scarlet": "red",
    "navy": "blue",
    "violet": "purple",
    "teal": "cyan",
    "lime": "green",
    "ball": "circle",
    "box": "square",
    "rectangle": "square",
    "huge": "large",
    "enormous": "large",
    "minuscule": "small",
    "pair": "two",
    "single": "one",
    "something": "object",
    "please": "-",
    "just": "-",
    "another": "-",
    "its": "-",
    "grey": "-",
    "black": "-",
    "pink": "-",
    "pentagon": "-",
}


def main() -> None:
    encoder = SentenceEncoder.from_folder(minilm_folder()).eval()
    with torch.no_grad():
        similarity = encoder(list(PROBES)) @ encoder(list(TARGETS)).t()
    right = 0
    print(f"{'word':<10} {'meant':<7} {'nearest known (cosine)':<40}")
    for row, (word, meant) in enumerate(PROBES.items()):
        values, which = similarity[row].topk(2)
        nearest = [(TARGETS[k], round(float(v), 2)) for v, k in zip(values, which)]
        right += nearest[0][0] == meant
        print(f"{word:<10} {meant:<7} {nearest}")
    meant_words = sum(m != "-" for m in PROBES.values())
    print(f"nearest known word is the meant one for {right} of {meant_words} words that mean one")
    worst_wrong = max(float(similarity[r].max()) for r, m in enumerate(PROBES.values()) if m == "-")
    print(f"highest cosine of a word that means nothing in the world: {worst_wrong:.2f}")


if __name__ == "__main__":
    main()
