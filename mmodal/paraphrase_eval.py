"""Scores a model on people's wordings: a paraphrase set of search queries and questions, each beside its meaning
in the grammar's wording, searched and asked over a Shapes test split.

A paraphrase set is a folder with ``search.tsv`` and ``questions.tsv``: lines of "meaning<TAB>text", ``#`` for
comments. The meaning is a text of the grammar (``semantics`` parses it) and gives the truth: the relevant images
of a query, the answer of a question. Both wordings are searched and asked the same way, so the gap between them
is what the wording costs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from mmodal.data.dataset import Dataset
from mmodal.shapes.scene import SpecError
from mmodal.shapes.semantics import normalize_answer, parse_question, parse_statement

log = logging.getLogger(__name__)

QUESTIONS_PER_MEANING = 6  # images asked each question (where the scene makes it askable)


class ParaphraseSetError(ValueError):
    """A paraphrase set that cannot be read: a missing file, a malformed line or a meaning outside the grammar."""


@dataclass(frozen=True)
class Paraphrase:
    meaning: str  # the grammar's wording
    text: str  # what people type


def read_paraphrases(folder: str | Path) -> tuple[list[Paraphrase], list[Paraphrase]]:
    """The (search, questions) paraphrases of ``folder``, every meaning checked against the grammar."""
    folder = Path(folder)
    out = []
    for name, parse in (("search.tsv", parse_statement), ("questions.tsv", parse_question)):
        path = folder / name
        if not path.is_file():
            raise ParaphraseSetError(f"{path} is missing: a paraphrase set holds search.tsv and questions.tsv")
        pairs = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) != 2:
                raise ParaphraseSetError(f"{path}:{number}: expected 'meaning<TAB>text', got {line!r}")
            try:
                parse(fields[0])
            except SpecError as e:
                raise ParaphraseSetError(f"{path}:{number}: the meaning is not a text of the grammar: {e}") from e
            pairs.append(Paraphrase(fields[0].strip(), fields[1].strip()))
        out.append(pairs)
    return out[0], out[1]


def score_search(
    paraphrases: list[Paraphrase],
    dataset: Dataset,
    rank: Callable[[str], np.ndarray],
    unknown_words: Callable[[str], list[str]],
) -> dict:
    """P@10 of each worded query and of its meaning, over ``dataset``'s images (``rank`` gives every image's row,
    best first); meanings that no image satisfies are left out and counted."""
    from mmodal.evaluate_search import precision_at_10

    rows, skipped = [], 0
    for pair in tqdm(paraphrases, desc="paraphrased search", unit="query", leave=False):
        statement = parse_statement(pair.meaning)
        relevant = {i for i, r in enumerate(dataset.images) if statement.holds(r.scene)}
        if not relevant:
            skipped += 1
            continue
        worded, grammar = precision_at_10(rank(pair.text), relevant), precision_at_10(rank(pair.meaning), relevant)
        rows.append({"text": pair.text, "meaning": pair.meaning, "worded": worded, "grammar": grammar})
    return {**_summary(rows, unknown_words), "skipped_no_relevant_image": skipped}


def score_questions(paraphrases: list[Paraphrase], dataset: Dataset, ask: Callable, unknown_words: Callable) -> dict:
    """Exact-match accuracy of each worded question and of its meaning, asked of up to QUESTIONS_PER_MEANING
    test images where the meaning has one true answer."""
    rows, skipped = [], 0
    for pair in tqdm(paraphrases, desc="paraphrased questions", unit="question", leave=False):
        question = parse_question(pair.meaning)
        askable = [(r, question.answer(r.scene)) for r in dataset.images]
        askable = [(r, a) for r, a in askable if a is not None]
        if not askable:
            skipped += 1
            continue
        picked = [askable[int(i)] for i in np.linspace(0, len(askable) - 1, min(QUESTIONS_PER_MEANING, len(askable)))]
        pictures = [Image.open(dataset.image_path(r)) for r, _ in picked]
        truths = [normalize_answer(a) for _, a in picked]
        worded = ask(pictures, [pair.text] * len(picked))
        grammar = ask(pictures, [pair.meaning] * len(picked))
        rows.append(
            {
                "text": pair.text,
                "meaning": pair.meaning,
                "worded": float(np.mean([normalize_answer(a) == t for a, t in zip(worded, truths)])),
                "grammar": float(np.mean([normalize_answer(a) == t for a, t in zip(grammar, truths)])),
                "n": len(picked),
            }
        )
    return {**_summary(rows, unknown_words), "skipped_not_askable": skipped}


def _summary(rows: list[dict], unknown_words: Callable[[str], list[str]]) -> dict:
    for row in rows:
        row["unknown_words"] = unknown_words(row["text"])
    worded = float(np.mean([r["worded"] for r in rows])) if rows else float("nan")
    grammar = float(np.mean([r["grammar"] for r in rows])) if rows else float("nan")
    return {
        "n": len(rows),
        "worded": round(worded, 4),
        "grammar": round(grammar, 4),
        "gap": round(grammar - worded, 4),
        "with_unknown_words": sum(bool(r["unknown_words"]) for r in rows),
        "worst": sorted(rows, key=lambda r: r["worded"] - r["grammar"])[:15],
    }
