"""The "answers" recipe: answers from object slots, over a model that already has them (the shipped one by
default), in two stages on one step counter.

1. noisy ground-truth slots (no pixels, cheap): the question reader's targets (type, phrases, relation, which
   the generator knows) and the answer, written by the language core after the slot evidence;
2. the same on the slots that the model's detector predicts, so that the answers learn its mistakes.

Everything the model had stays frozen, the language core included: search keeps reading queries as before,
and the index's vectors stay valid. Questions are drawn one per scene, cycling through every type, so that
each type is taught equally often; the reader also reads questions drawn from the whole question grammar,
for its targets alone. VQAv2 files (``vqa_questions`` …) add their questions to the second stage, asked of
their images' slots, for the answer alone.

Two baselines train the same way: ``blind`` answers from the question alone (no slot in the first stage,
blank pictures in the second), and ``fresh_core`` trains a fresh language core along (of ``model``'s kind: the
MoE, or a dense core of the same active width), for the MoE against the dense core on equal terms; search
does not read with such a model.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import PreTrainedTokenizerFast

from encoders.pixels import letterbox_frame
from fusion.reasoner import ROLES
from mmodal.config import ModelConfig, dense_text, with_answers
from mmodal.model import DEFAULT_MODEL, WEIGHTS_FILE, MModalModel, resolve_model_path
from mmodal.shapes.semantics import COUNT_WORDS, QUESTION_TYPES, RELATIONS, SIZES, Question
from mmodal.shapes.world import any_question, count_question, question_of_type, question_word_changed
from mmodal.training.config import TrainConfig
from mmodal.training.slot_recipe import SlotTrainingData, load_towers, slots_seen, splice_contexts
from mmodal.training.slots import IGNORE, ground_truth_slots, phrase_targets
from mmodal.training.vqa_data import QuestionAnswerData

# What each question type's answer looks at, for drawing it: the subject, both objects of a relation, or the
# object in the relation to the named one.
ANSWER_FOCUS = {"relation": "pair", "query": "related"}
# The types whose answers are drawn in turn, and their answers.
BALANCED_ANSWERS = {"count": COUNT_WORDS, "exist": ("yes", "no"), "relation": ("yes", "no"), "size": SIZES}
ANSWER_MODULES = ("answerer.",)
CORE_MODULES = ("language.",)


def build_answer_model(config: TrainConfig) -> MModalModel:
    """The model of ``init_from`` (the shipped one by default) with a fresh answer reasoner (and, with
    ``fresh_core``, a fresh language core of ``model``'s kind)."""
    folder = resolve_model_path(config.init_from or DEFAULT_MODEL)
    base = ModelConfig.load(folder)
    if base.slots is None:
        raise ValueError(f"{folder} has no object slots; train the slots recipe first, then answers over it")
    if config.model == "dense" and not config.fresh_core:
        raise ValueError("a dense core has no trained weights to answer with; add --fresh-core to train one")
    if config.model == "dense":
        base = replace(base, text=dense_text(base.text))
    model = MModalModel(
        with_answers(base, QUESTION_TYPES, ANSWER_FOCUS), PreTrainedTokenizerFast.from_pretrained(folder)
    )
    load_towers(model, load_file(str(folder / WEIGHTS_FILE)), answer_modules(config), str(folder))
    return model


def answer_modules(config: TrainConfig) -> tuple[str, ...]:
    """The modules the recipe trains: the answer reasoner, and the language core when it is fresh."""
    return ANSWER_MODULES + (CORE_MODULES if config.fresh_core else ())


def answer_stage_bounds(step: int, config: TrainConfig) -> tuple[int, int]:
    """(first step, length) of the stage ``step`` is in: ground-truth slots, then predicted ones."""
    if step < config.answer_steps:
        return 0, config.answer_steps
    return config.answer_steps, config.answer_joint_steps


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


def answer_recipe_losses(
    model: MModalModel,
    data: SlotTrainingData,
    indices: np.ndarray,
    step: int,
    config: TrainConfig,
    rng: np.random.Generator,
    asked: QuestionAnswerData | None = None,
) -> dict[str, torch.Tensor]:
    """One step's losses on the training scenes ``indices`` (and, in the second stage, on questions of
    ``asked``, VQAv2 files, when given)."""
    device = model.device
    layout, n_slots = model.slot_encoder.layout, model.config.slots.max_slots
    own_slots = step >= config.answer_steps
    if not own_slots:
        scenes = [data.scenes[int(i)] for i in indices]
        if config.blind:
            slots = torch.zeros(len(scenes), n_slots, layout.width, device=device)
        else:
            slots = torch.stack([ground_truth_slots(s, layout, n_slots, rng, config.slot_noise) for s in scenes])
    else:
        pixels, scenes = data.pictures.batch(indices, rng)
        frames = torch.tensor([letterbox_frame(s.width, s.height) for s in scenes])
        slots = slots_seen(model, torch.zeros_like(pixels) if config.blind else pixels, frames)
    rows, questions, answers = draw_questions(scenes, rng, step * len(scenes))
    slots = slots.to(device)[rows]
    n = len(questions)
    free_questions, free_answers = [], []
    if own_slots and asked is not None:
        pixels, frames, free_questions, free_answers = asked.batch(len(indices) // 2, rng)
        pixels = torch.zeros_like(pixels) if config.blind else pixels  # the question-only baseline sees blanks
        slots = torch.cat([slots, slots_seen(model, pixels, frames).to(device)])
    # As the query reader does: texts from the whole grammar, read for their structure alone, and some texts
    # read with each shared word's context taken from a copy that differs in one word, so that a colour–shape
    # pair never seen together is read word by word.
    read = questions + [any_question(rng, "train") for _ in range(config.parse_texts)]
    donors = [question_word_changed(q, rng, "train") if rng.random() < config.parse_splice else None for q in read]
    spliced = [i for i, d in enumerate(donors) if d is not None]
    texts = [q.text() for q in questions] + free_questions + [q.text() for q in read[n:]]
    q_ids, q_mask = model.tokenize(texts + [donors[i].text() for i in spliced])
    a_ids, a_mask = model.tokenize(answers + free_answers)
    asked_rows = n + len(free_questions)  # the rows with an answer to write, each with its slots
    # Reading rows: the generated questions (0 … n), then the grammar's (after the VQAv2 ones).
    reading_rows = torch.cat([torch.arange(n), torch.arange(asked_rows, len(texts))]).to(device)
    with torch.set_grad_enabled(config.fresh_core and torch.is_grad_enabled()):
        tokens, core_balance = model.text_tokens(q_ids, q_mask)
    if spliced:
        tokens = splice_contexts(tokens, q_ids, reading_rows[torch.tensor(spliced, device=device)], len(texts))
    answerer = model.answerer
    logits = answerer.read(tokens[: len(texts)], q_mask[: len(texts)])
    evidence = answerer.evidence({k: v[:asked_rows] for k, v in logits.items()}, slots, model.reasoner)
    answer_loss, answer_balance = model.answer_loss_from_slots(
        answerer.prefix(evidence), evidence.features, a_ids, a_mask
    )
    targets = reading_targets(read, model)
    reading = [
        F.cross_entropy(logits[k][reading_rows].float(), t.to(device), ignore_index=IGNORE)
        for k, t in targets.items()
        if (t != IGNORE).any()
    ]
    losses = {
        "answer": config.vqa_loss_weight * answer_loss,
        "reading": config.parse_loss_weight * torch.stack(reading).mean(),
    }
    if config.fresh_core:
        losses["moe"] = core_balance + answer_balance
    return losses
