"""The reading stages: the language half of the slot model (tokenizer, language core, text adapter, query reader,
answer reasoner) learning to read texts as people word them, over object slots.

Two stages, one object each:

1. ``reading``, on noisy ground-truth slots (no pixels, cheap): search texts (true queries of every structure,
   foils, and texts drawn from the whole grammar) and questions, each worded as people type it with the targets
   of its meaning; the query reader's parse targets and the soft logic's match loss, the text embedding's
   contrastive loss against the slot-pooled image embedding (with hard negatives mined from the model's own
   neighbours), the question reader's targets and the answer, written by the core after the slot evidence;
2. ``joint``, the same on the slots that the model's detector predicts, so that reading learns its mistakes.

From nothing (``READING_MODULES``) the slot pooler and the whole reasoner (relation scorer and presence
calibration too) learn along. Over a trained model's perception (``LANGUAGE_MODULES``, recipe "language") they
stay as they are, so the image vectors of its indexes stay valid.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from mmodal.config import ModelConfig
from mmodal.encoders.tokenizer import build_tokenizer, known_words
from mmodal.fusion.reasoner import PART_KINDS, parse_loss
from mmodal.kernels.contrastive import multi_positive_nce
from mmodal.model import DEFAULT_MODEL, WEIGHTS_FILE, MModalModel, resolve_model_path
from mmodal.shapes import question_sampling, text_edits, wording, world
from mmodal.shapes.scene import COLORS, SHAPES
from mmodal.shapes.semantics import COUNT_WORDS, Question
from mmodal.training.config import TrainConfig
from mmodal.training.questions import draw_questions, reading_targets
from mmodal.training.slot_batches import (
    TEXT_KINDS,
    SlotTrainingData,
    batch_slots,
    draw_foil,
    draw_statement,
    load_towers,
    splice_contexts,
)
from mmodal.training.slots import IGNORE, parse_targets, relation_targets
from mmodal.training.temperature import Temperature

LANGUAGE_MODULES = ("language.", "text_adapter.", "reasoner.reader.", "answerer.", "temperature")
READING_MODULES = ("language.", "text_adapter.", "reasoner.", "answerer.", "slot_pooler.", "temperature")
CORPUS_DRAWS = 20000  # statements and questions (each in the grammar's wording and in people's) for the tokenizer
# Whole-scene captions (lists of up to four objects) twice as often as other texts: a reader that sees few long
# lists miscounts their parts.
CAPTIONED_KINDS = (*TEXT_KINDS, "caption")
VOCAB_SIZE = 1024  # room for every word of the wording grammar and the answers to be one token


def wording_corpus(rng: np.random.Generator, draws: int = CORPUS_DRAWS) -> list[str]:
    """Texts for the tokenizer: statements and questions from the whole grammar, each also worded as people do,
    the answers, and the wording vocabulary itself, so that every word it knows is a token of its own."""
    texts = []
    for _ in range(draws):
        statement, question = world.any_statement(rng, "train"), question_sampling.any_question(rng, "train")
        texts += [statement.text(), wording.word_statement(statement, rng).text]
        texts += [question.text(), wording.word_question(question, rng).text]
    words = " ".join([*wording.vocabulary(), *COLORS, *SHAPES, *COUNT_WORDS, "yes", "no"])
    return texts + [words] * 500


def reading_tokenizer(seed: int, vocab_size: int = VOCAB_SIZE, draws: int = CORPUS_DRAWS):
    """A fresh tokenizer from the wording grammar, and the words it knows."""
    corpus = wording_corpus(np.random.default_rng(seed), draws)
    return build_tokenizer(corpus, vocab_size=vocab_size), known_words(corpus)


def language_over(config: TrainConfig) -> MModalModel:
    """The model of ``init_from`` (the shipped one by default) with a fresh tokenizer, language core, text adapter,
    query reader and answer reasoner over its perception, slot pooler and relation scorer (recipe "language")."""
    folder = resolve_model_path(config.init_from or DEFAULT_MODEL)
    base = ModelConfig.load(folder)
    tokenizer, known = reading_tokenizer(config.seed)
    model = MModalModel(replace(base, text=replace(base.text, vocab_size=VOCAB_SIZE, known_words=known)), tokenizer)
    load_towers(model, load_file(str(folder / WEIGHTS_FILE)), LANGUAGE_MODULES, str(folder))
    return model


@dataclass(frozen=True)
class ReadingStage:
    """One reading stage: on noisy ground-truth slots, or with ``seen`` on the detector's own."""

    seen: bool
    modules: tuple[str, ...] = READING_MODULES
    batch_size: int = 64
    lr: float = 1e-3
    mines: bool = True  # batches take pairs of images the model's own embedding confuses
    data_kind: str = "scenes"

    @property
    def name(self) -> str:
        return "joint" if self.seen else "reading"

    def length(self, config: TrainConfig) -> int:
        return config.joint_steps if self.seen else config.reading_steps

    def losses(
        self,
        model: MModalModel,
        data: SlotTrainingData,
        size: int,
        mined: np.ndarray,
        step: int,
        config: TrainConfig,
        rng: np.random.Generator,
        temperature: Temperature,
    ) -> dict[str, torch.Tensor]:
        """One step's losses on ``size`` training scenes, the ``mined`` ones among them."""
        fresh = rng.choice(len(data), size=max(0, size - len(mined)), replace=False)
        indices = np.concatenate([fresh, mined]).astype(np.int64)
        scenes, slots = batch_slots(model, data, indices, rng, config.slot_noise, self.seen)
        search = search_losses(model, scenes, slots, rng, config, temperature)
        answers = answer_losses(model, scenes, slots, rng, config, step)
        balance = search.pop("moe_balance") + answers.pop("moe_balance")
        return {**search, **answers, "moe": balance}

    def validate(self, model: MModalModel, config: TrainConfig) -> dict[str, float]:
        return {}  # search and answer figures come from `mmodal eval`


def _worded(items: list, say, share: float, rng: np.random.Generator) -> tuple[list[str], list]:
    """Texts for ``items`` (statements or questions): a ``share`` of them worded as people type them; and the
    meaning of each text as it says it."""
    texts, meanings = [], []
    for item in items:
        if rng.random() < share:
            worded = say(item, rng)
            texts.append(worded.text)
            meanings.append(worded.meaning)
        else:
            texts.append(item.text())
            meanings.append(item)
    return texts, meanings


def _donors(readings: list, change, say, config: TrainConfig, rng: np.random.Generator) -> tuple[list, list, list]:
    """For a ``parse_splice`` share of ``readings``: (rows, their (text, meaning), their donors' texts), each
    donor the same text with one attribute word changed and worded the same way, so that the two differ in that
    word alone."""
    rows, texts, donors = [], [], []
    for i, reading in enumerate(readings):
        donor = change(reading, rng, "train") if rng.random() < config.parse_splice else None
        if donor is None:
            continue
        worded = rng.random() < config.worded_share
        seed = int(rng.integers(2**31))
        if worded:
            said = say(reading, np.random.default_rng(seed))
            texts.append((said.text, said.meaning))
            donors.append(say(donor, np.random.default_rng(seed)).text)
        else:
            texts.append((reading.text(), reading))
            donors.append(donor.text())
        rows.append(i)
    return rows, texts, donors


def _read_with_donors(model: MModalModel, texts: list[str], spliced: list[int], donors: list[str]):
    """The core's tokens of ``texts``, each row of ``spliced`` with every word it shares with its donor taken from
    the donor's context (see ``splice_contexts``): the reader learns to read each word for itself, as it must for
    the colour–shape pairs that training never shows together."""
    ids, mask = model.tokenize(texts + donors)
    tokens, balance = model.text_tokens(ids, mask)
    if spliced:
        rows = torch.tensor(spliced, device=model.device)
        tokens = splice_contexts(tokens, ids, rows, len(texts))
    return tokens[: len(texts)], mask[: len(texts)], balance


def search_losses(
    model: MModalModel,
    scenes,
    slots: torch.Tensor,
    rng: np.random.Generator,
    config: TrainConfig,
    temperature: Temperature,
) -> dict[str, torch.Tensor]:
    """Parse, match and contrastive losses for search texts about the batch's scenes and from the grammar."""
    device = model.device
    statements = [draw_statement(s, rng, CAPTIONED_KINDS) for s in scenes]
    statements += [f for f in (draw_foil(s, rng) for s in scenes[: len(scenes) // 2]) if f is not None]
    readings = [world.any_statement(rng, "train") for _ in range(config.parse_texts)]
    texts, meanings = _worded(statements + readings, wording.word_statement, config.worded_share, rng)
    n = len(statements)
    rows, spliced_texts, donors = _donors(readings, text_edits.one_word_changed, wording.word_statement, config, rng)
    for row, (text, meaning) in zip(rows, spliced_texts):
        texts[n + row], meanings[n + row] = text, meaning
    tokens, mask, balance = _read_with_donors(model, texts, [n + r for r in rows], donors)
    text_emb = model.embed_text_tokens(tokens[:n], mask[:n])
    reasoner = model.reasoner
    logits = reasoner.reader(tokens, mask)
    targets = parse_targets(meanings, reasoner.config)
    losses = {"parse": config.parse_loss_weight * parse_loss(logits, {k: v.to(device) for k, v in targets.items()})}
    holds = torch.tensor([[m.holds(sc) for sc in scenes] for m in meanings[:n]], dtype=torch.float32, device=device)
    scorer = reasoner.relation_scorer
    if next(scorer.parameters()).requires_grad:
        positions, labels = relation_targets(scenes, reasoner.config.relations)
        if len(positions):
            pair_logits = scorer(positions.to(device))[:, 0, 1]  # (M, R): object 0 to object 1
            losses["relation"] = F.binary_cross_entropy_with_logits(pair_logits.float(), labels.to(device))
    with torch.set_grad_enabled(next(scorer.parameters()).requires_grad):
        related = torch.sigmoid(scorer(slots[..., reasoner.layout.position]).float())
    with torch.set_grad_enabled(next(model.slot_pooler.parameters()).requires_grad):
        image_emb = model.slot_pooler(slots)
    match = 0.0
    for t in range(n):
        kinds = [PART_KINDS[k] for k in targets["kind"][t].tolist()]
        probability = reasoner.decide(reasoner.parse_from_logits(logits, t, kinds), slots, related).probability
        match = match + F.binary_cross_entropy(probability.clamp(1e-5, 1 - 1e-5), holds[t])
    losses["match"] = match / n
    similarity = temperature.scale() * image_emb @ text_emb.t()  # (B, T): foils included
    positives = holds.t().bool()
    b = len(scenes)
    losses["pool"] = 0.5 * (
        multi_positive_nce(similarity, positives) + multi_positive_nce(similarity[:, :b].t(), positives[:, :b].t())
    )
    losses["moe_balance"] = balance
    return losses


def answer_losses(
    model: MModalModel, scenes, slots: torch.Tensor, rng: np.random.Generator, config: TrainConfig, step: int
) -> dict[str, torch.Tensor]:
    """The question reader's targets and the answers' words, for one question per scene (every type in turn)
    and questions from the whole grammar read for their targets alone."""
    device = model.device
    rows, questions, answers = draw_questions(scenes, rng, step * len(scenes))
    slots = slots[rows]
    n = len(questions)
    extra: list[Question] = [question_sampling.any_question(rng, "train") for _ in range(config.parse_texts)]
    texts, meanings = _worded(questions + extra, wording.word_question, config.worded_share, rng)
    rows, spliced_texts, donors = _donors(extra, text_edits.question_word_changed, wording.word_question, config, rng)
    for row, (text, meaning) in zip(rows, spliced_texts):
        texts[n + row], meanings[n + row] = text, meaning
    tokens, q_mask, balance = _read_with_donors(model, texts, [n + r for r in rows], donors)
    a_ids, a_mask = model.tokenize(answers)
    answerer = model.answerer
    logits = answerer.read(tokens, q_mask)
    evidence = answerer.evidence({k: v[:n] for k, v in logits.items()}, slots, model.reasoner)
    answer, answer_balance = model.answer_loss(answerer.prefix(evidence), evidence.features, a_ids, a_mask)
    targets = reading_targets(meanings, model)
    reading = [
        F.cross_entropy(logits[k].float(), t.to(device), ignore_index=IGNORE)
        for k, t in targets.items()
        if (t != IGNORE).any()
    ]
    return {
        "answer": config.answer_loss_weight * answer,
        "reading": config.parse_loss_weight * torch.stack(reading).mean(),
        "moe_balance": balance + answer_balance,
    }
