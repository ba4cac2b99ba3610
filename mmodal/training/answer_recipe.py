"""The "answers" recipe: answers from object slots, over a model that already has them (the shipped one by
default), in two stages on one step counter.

1. noisy ground-truth slots (no pixels, cheap): the question reader's targets (type, phrases, relation, which
   the generator knows) and the answer, written by the language core after the slot evidence;
2. the same on the slots that the model's detector predicts, so that the answers learn its mistakes.

Everything the model had stays frozen, the language core included: search keeps reading queries as before,
and the index's vectors stay valid. Questions are drawn one per scene, cycling through every type, so that
each type is taught equally often.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import PreTrainedTokenizerFast

from encoders.pixels import letterbox_frame
from fusion.reasoner import ROLES
from mmodal.config import ModelConfig, with_answers
from mmodal.model import DEFAULT_MODEL, WEIGHTS_FILE, MModalModel, resolve_model_path
from mmodal.shapes.semantics import QUESTION_TYPES, RELATIONS, Question
from mmodal.shapes.world import question_of_type, question_word_changed
from mmodal.training.config import TrainConfig
from mmodal.training.slot_recipe import SlotTrainingData, load_towers, splice_contexts
from mmodal.training.slots import IGNORE, ground_truth_slots, phrase_targets

# What each question type's answer looks at, for drawing it: the subject, both objects of a relation, or the
# object in the relation to the named one.
ANSWER_FOCUS = {"relation": "pair", "query": "related"}
ANSWER_MODULES = ("answerer.",)


def build_answer_model(config: TrainConfig) -> MModalModel:
    """The model of ``init_from`` (the shipped one by default) with a fresh answer reasoner."""
    folder = resolve_model_path(config.init_from or DEFAULT_MODEL)
    base = ModelConfig.load(folder)
    if base.slots is None:
        raise ValueError(f"{folder} has no object slots; train the slots recipe first, then answers over it")
    config_with_answers = with_answers(base, QUESTION_TYPES, ANSWER_FOCUS)
    model = MModalModel(config_with_answers, PreTrainedTokenizerFast.from_pretrained(folder))
    load_towers(model, load_file(str(folder / WEIGHTS_FILE)), ANSWER_MODULES, str(folder))
    return model


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
    """One askable question per scene where one exists, cycling through the types; (scene rows, questions,
    answers)."""
    rows, questions, answers = [], [], []
    for i, scene in enumerate(scenes):
        qtype = QUESTION_TYPES[(offset + i) % len(QUESTION_TYPES)]
        for _ in range(4):
            q = question_of_type(qtype, scene, rng, "train")
            answer = q.answer(scene) if q is not None else None
            if answer is not None and not q.held_out:
                rows.append(i), questions.append(q), answers.append(answer)
                break
    return rows, questions, answers


def answer_recipe_losses(
    model: MModalModel, data: SlotTrainingData, indices: np.ndarray, step: int, config: TrainConfig, rng
) -> dict[str, torch.Tensor]:
    device = model.device
    if step < config.answer_steps:
        scenes = [data.scenes[int(i)] for i in indices]
        layout, n = model.slot_encoder.layout, model.config.slots.max_slots
        slots = torch.stack([ground_truth_slots(s, layout, n, rng, config.slot_noise) for s in scenes]).to(device)
    else:
        pixels, scenes = data.pictures.batch(indices, rng)
        frames = torch.tensor([letterbox_frame(s.width, s.height) for s in scenes])
        with torch.no_grad():
            slots = model.image_slots(pixels.to(device), frames.to(device)).float()
    rows, questions, answers = draw_questions(scenes, rng, step * len(scenes))
    # As the query reader does: some questions read each shared word with the context of a copy that differs
    # in one word, so that a colour–shape pair never seen together is read word by word.
    donors = [question_word_changed(q, rng, "train") if rng.random() < config.parse_splice else None for q in questions]
    spliced = [i for i, d in enumerate(donors) if d is not None]
    n = len(questions)
    q_ids, q_mask = model.tokenize([q.text() for q in questions] + [donors[i].text() for i in spliced])
    a_ids, a_mask = model.tokenize(answers)
    with torch.no_grad():
        tokens, _ = model.text_tokens(q_ids, q_mask)
        if spliced:
            tokens = splice_contexts(tokens, q_ids, torch.tensor(spliced, device=device), n)
    tokens, q_mask = tokens[:n], q_mask[:n]
    prefix, logits, evidence = model.answerer(tokens, q_mask, slots[rows], model.reasoner)
    answer_loss, _ = model.answer_loss_from_slots(prefix, evidence.features, a_ids, a_mask)
    targets = reading_targets(questions, model)
    reading = [
        F.cross_entropy(logits[k].float(), t.to(device), ignore_index=IGNORE)
        for k, t in targets.items()
        if (t != IGNORE).any()
    ]
    return {
        "answer": config.vqa_loss_weight * answer_loss,
        "reading": config.parse_loss_weight * torch.stack(reading).mean(),
    }
