"""Writing answers: beam search over the language core after the slot evidence, scored by the answer reasoner,
and what an answer says besides its words (its confidence, the objects it looked at, the words it could not read).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedTokenizerFast

from mmodal.encoders.language import MoELanguageModel
from mmodal.encoders.tokenizer import WORD
from mmodal.fusion.answers import AnswerReasoner

MAX_ANSWER_TOKENS = 8


class EvidenceScores(LogitsProcessor):
    """Beam search's next-word log-probabilities from the core, turned into the answer's by the answer reasoner
    (sharpened and shifted by each question's evidence ``features``, (B, E))."""

    def __init__(self, answerer: AnswerReasoner, features: torch.Tensor, beams: int = 1):
        self.answerer, self.features, self.beams = answerer, features, beams

    def row(self, b: int) -> EvidenceScores:
        return EvidenceScores(self.answerer, self.features[b : b + 1])

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        # Beam search hands over log-softmaxed logits, which differ from the logits by a constant per row: the
        # answer's scores come out the same from either.
        features = self.features.repeat_interleave(self.beams, dim=0)
        return self.answerer.answer_scores(scores[:, None, :], features, input_ids.shape[1] - 1)[:, 0]


@dataclass
class Answer:
    answer: str
    confidence: float
    alternatives: list[tuple[str, float]]
    # The objects the answer looked at: cx, cy, d as fractions of the picture, and the weight it gave each.
    looked_at: list[dict] = field(default_factory=list)
    note: str | None = None  # what the model cannot answer, for a model that answers only some questions
    unknown_words: list[str] = field(default_factory=list)  # words of the question the model cannot read

    def to_dict(self) -> dict:
        out = {
            "answer": self.answer,
            "confidence": round(self.confidence, 6),
            "alternatives": [{"answer": a, "confidence": round(c, 6)} for a, c in self.alternatives],
        }
        if self.looked_at:
            out["looked_at"] = self.looked_at
        if self.note:
            out["note"] = self.note
        if self.unknown_words:
            out["unknown_words"] = self.unknown_words
        return out


def doubted(answer: Answer, question: str, unknown: list[str]) -> Answer:
    """The answer's confidence scaled by the share of the question's words the model knows (``unknown`` are the
    others): the decoder is sure of itself even where it cannot read the question, so its own probability says
    nothing there."""
    if not unknown:
        return answer
    words = max(1, len(WORD.findall(question)))
    known = max(0.0, 1 - len(unknown) / words)
    return replace(
        answer,
        confidence=answer.confidence * known,
        alternatives=[(a, c * known) for a, c in answer.alternatives],
        note=f"the model does not know the words {', '.join(unknown[:5])}: the answer is a guess",
        unknown_words=unknown,
    )


def looked_at(boxes: torch.Tensor, present: torch.Tensor, weights: torch.Tensor) -> list[list[dict]]:
    """Per picture, the objects present (boxes (B, N, 3): cx, cy, d) with the weight the answer gave each."""
    return [
        [
            {"cx": round(float(x), 4), "cy": round(float(y), 4), "d": round(float(d), 4), "weight": round(float(w), 4)}
            for (x, y, d), w, real in zip(boxes[b].tolist(), weights[b].tolist(), present[b].tolist())
            if real
        ]
        for b in range(len(boxes))
    ]


class AnswerWriter:
    """Beam search over the language core after each prefix, with the answer reasoner's scores."""

    def __init__(self, language: MoELanguageModel, tokenizer: PreTrainedTokenizerFast, answerer: AnswerReasoner):
        self.language, self.tokenizer, self.answerer = language, tokenizer, answerer

    def decode(
        self, prefix: torch.Tensor, prefix_mask: torch.Tensor, alternatives: int, scored: EvidenceScores
    ) -> list[tuple[str, float, list[tuple[str, float]]]]:
        """Beam search after each prefix → (answer, its probability, the other beams' answers) per row; ``scored``
        turns the core's word log-probabilities into the answer's."""
        beams = max(1, alternatives + 1)
        scored.beams = beams
        start = torch.full((len(prefix), 1), self.tokenizer.bos_token_id, device=prefix.device)
        out = self.language.generate(
            input_ids=start,
            prefix_embeds=prefix,
            prefix_mask=prefix_mask,
            max_new_tokens=MAX_ANSWER_TOKENS,
            num_beams=beams,
            num_return_sequences=beams,
            do_sample=False,
            length_penalty=0.0,  # scores are plain log-probabilities of the whole answer
            early_stopping=True,
            output_scores=True,
            return_dict_in_generate=True,
            use_cache=False,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            logits_processor=LogitsProcessorList([scored]),
        )
        texts = self.tokenizer.batch_decode(out.sequences, skip_special_tokens=True)
        scores = out.sequences_scores.exp().tolist() if beams > 1 else None
        decoded = []
        for b in range(len(prefix)):
            if scores is None:
                probability = self.sequence_probability(
                    prefix[b : b + 1], prefix_mask[b : b + 1], out.sequences[b], scored.row(b)
                )
                ranked = [(texts[b].strip(), probability)]
            else:
                ranked = []
                for r in range(b * beams, (b + 1) * beams):
                    if texts[r].strip() not in [t for t, _ in ranked]:
                        ranked.append((texts[r].strip(), scores[r]))
            decoded.append((ranked[0][0], ranked[0][1], ranked[1:]))
        return decoded

    def sequence_probability(self, prefix, prefix_mask, sequence, scored: EvidenceScores) -> float:
        ids = sequence.unsqueeze(0)
        logits = self.language(input_ids=ids, prefix_embeds=prefix, prefix_mask=prefix_mask).logits
        words = self.answerer.answer_scores(logits[:, :-1], scored.features, 0)[0]
        logp = words.gather(1, ids[0, 1:, None]).squeeze(1)
        keep = ids[0, 1:] != self.tokenizer.pad_token_id
        return float(logp[keep].sum().exp())
