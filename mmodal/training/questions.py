"""Questions for the reading stages: drawn one per scene in turn over every type (and, for the types whose answers a
scene's odds would skew, over their answers), and what the question reader must read of each."""

from __future__ import annotations

import numpy as np
import torch

from mmodal.fusion.reasoner import ROLES
from mmodal.model import MModalModel
from mmodal.shapes.question_sampling import count_question, question_of_type
from mmodal.shapes.scene import RELATIONS, SIZES
from mmodal.shapes.semantics import COUNT_WORDS, QUESTION_TYPES, Question
from mmodal.training.slots import IGNORE, phrase_targets

# The types whose answers are drawn in turn, and their answers.
BALANCED_ANSWERS = {"count": COUNT_WORDS, "exist": ("yes", "no"), "relation": ("yes", "no"), "size": SIZES}


def reading_targets(questions: list[Question], model: MModalModel) -> dict[str, torch.Tensor]:
    """What the question reader must read: type, relation, and each phrase's attributes ("any" where a phrase
    names none; a "what is left of …" question's subject is the unknown object, any of everything)."""
    attributes = model.config.reasoner.attributes
    types = model.config.answers.question_types
    targets = {
        "question_type": torch.tensor([types.index(q.type) for q in questions]),
        "relation": torch.tensor([RELATIONS.index(q.relation) if q.relation else IGNORE for q in questions]),
    }
    for role in ROLES:
        rows = []
        for q in questions:
            phrase = q.target if role == "a" else q.other
            if phrase is None and not (role == "a" and q.type == "query"):
                rows.append(dict.fromkeys(attributes, IGNORE))
            else:
                rows.append(phrase_targets(phrase, attributes) if phrase else dict.fromkeys(attributes, 0))
        for k in attributes:
            targets[f"{role}.{k}"] = torch.tensor([r[k] for r in rows])
    return targets


def draw_questions(scenes, rng: np.random.Generator, offset: int) -> tuple[list[int], list[Question], list[str]]:
    """One askable question per scene where one exists, cycling through the types, and for the types whose
    answers a scene's odds would skew (most counts are "one"), through their answers as far as the scenes
    allow: of a few questions drawn, the first with the answer wanted is kept. (scene rows, questions,
    answers)."""
    rows, questions, answers = [], [], []
    for i, scene in enumerate(scenes):
        turn = offset + i
        qtype = QUESTION_TYPES[turn % len(QUESTION_TYPES)]
        values = BALANCED_ANSWERS.get(qtype)
        wanted = values[(turn // len(QUESTION_TYPES)) % len(values)] if values else None
        kept = None
        for _ in range(8 if wanted else 4):
            q = question_of_type(qtype, scene, rng, "train")
            answer = q.answer(scene) if q is not None else None
            if answer is None or q.held_out:
                continue
            if kept is None or answer == wanted:
                kept = (q, answer)
            if wanted is None or answer == wanted:
                break
        if qtype == "count" and kept is not None and kept[1] != wanted:
            q = count_question(scene, COUNT_WORDS.index(wanted), rng, "train")
            kept = (q, wanted) if q is not None else kept
        if kept is not None:
            rows.append(i), questions.append(kept[0]), answers.append(kept[1])
    return rows, questions, answers
