"""Words from the audio tower's CTC head: beam search (flashlight's decoder, through torchaudio) with the
tower's word-bigram prior, and a confidence for each word and for the whole transcript."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torchaudio.models.decoder import CTCDecoderLM, CTCDecoderLMState, ctc_decoder

BLANK, SILENCE = "<blank>", "<silence>"  # flashlight's own tokens: CTC's blank, and a word boundary never spoken
BEAM_SIZE = 16
# Words a beam may grow by at each frame: the head's most likely ones. Trying all of the vocabulary calls the prior
# for every word at every frame (230 ms a clip); the 8 likeliest give the same transcripts in 12 ms (BENCHMARKS.md).
BEAM_TOKENS = 8
PRIOR_WEIGHT = 0.5  # how much the word-bigram prior counts against the head's evidence
# A transcript is taken as the query's words from this confidence up; below it, the clip is searched by sound
# (speech in the test voices and clips without query words fall on either side of it: BENCHMARKS.md).
MIN_CONFIDENCE = 0.5


@dataclass(frozen=True)
class Transcript:
    """What a clip says, as far as the tower's vocabulary goes.

    ``confidence`` is the weakest word's: the head's probability of that word at the moment it heard it. A clip
    in which the head heard no word has confidence 0.
    """

    text: str
    confidence: float
    words: tuple[tuple[str, float], ...] = field(default=())

    @property
    def heard(self) -> bool:
        """Whether the clip said words of the vocabulary clearly: every word at least ``MIN_CONFIDENCE``."""
        return bool(self.text) and self.confidence >= MIN_CONFIDENCE

    def summary(self) -> str:
        """One line for people: what was heard and how sure."""
        return f'heard: "{self.text}" (confidence {self.confidence:.0%})'

    def to_dict(self) -> dict:
        return {
            "transcript": self.text,
            "confidence": round(self.confidence, 6),
            "words": [{"word": w, "confidence": round(c, 6)} for w, c in self.words],
        }


class _BigramPrior(CTCDecoderLM):
    """The tower's word bigram as flashlight's language model; a state is the last word's token index."""

    def __init__(self, bigram: torch.Tensor, first_word_token: int):
        super().__init__()
        self.bigram = bigram.tolist()  # (1 + V, 1 + V): row 0 and column 0 are the query's start and end
        self.offset = first_word_token - 1  # flashlight token index of word w is w + offset (w counts from 1)
        self.root = CTCDecoderLMState()
        self.last: dict[CTCDecoderLMState, int] = {}

    def start(self, start_with_nothing: bool) -> CTCDecoderLMState:
        self.last = {self.root: 0}
        return self.root

    def score(self, state: CTCDecoderLMState, token_index: int) -> tuple[CTCDecoderLMState, float]:
        word = token_index - self.offset
        if word < 1:  # the boundary token, which the head never emits
            return state, 0.0
        child = state.child(token_index)
        self.last[child] = word
        return child, self.bigram[self.last[state]][word]

    def finish(self, state: CTCDecoderLMState) -> tuple[CTCDecoderLMState, float]:
        return state, self.bigram[self.last[state]][0]


class WordDecoder:
    """CTC log-probabilities (B, T, 1 + V) over ``vocabulary`` (blank first) → a :class:`Transcript` per clip.
    ``beam_tokens``: words a beam may grow by at each frame (None: all of them)."""

    def __init__(
        self,
        vocabulary: tuple[str, ...],
        bigram: torch.Tensor,
        beam_size: int = BEAM_SIZE,
        beam_tokens: int | None = BEAM_TOKENS,
    ):
        self.vocabulary = vocabulary
        self.prior = _BigramPrior(bigram.float().cpu(), first_word_token=2)
        self.decoder = ctc_decoder(
            lexicon=None,
            tokens=[BLANK, SILENCE, *vocabulary],
            lm=self.prior,
            beam_size=beam_size,
            beam_size_token=None if beam_tokens is None else min(beam_tokens, len(vocabulary)),
            lm_weight=PRIOR_WEIGHT,
            sil_score=-1e9,
            blank_token=BLANK,
            sil_token=SILENCE,
        )

    def __call__(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[Transcript]:
        log_probs = log_probs.detach().float().cpu()
        never = torch.full_like(log_probs[..., :1], -1e9)  # the boundary token's column
        emissions = torch.cat([log_probs[..., :1], never, log_probs[..., 1:]], dim=-1).contiguous()
        transcripts = []
        for b, best in enumerate(self.decoder(emissions, lengths.cpu().to(torch.int32))):
            hypothesis = best[0]
            words, since = [], 0
            for token, moment in zip(hypothesis.tokens.tolist(), hypothesis.timesteps.tolist()):
                if token >= 2:
                    # The word's peak probability since the previous word: flashlight's moments count from the
                    # boundary token before the first frame, so they run a frame late.
                    span = log_probs[b, since : max(since + 1, moment), token - 1]
                    words.append((self.vocabulary[token - 2], float(span.max().exp())))
                    since = max(since + 1, moment)
            confidence = min((c for _, c in words), default=0.0)
            transcripts.append(Transcript(" ".join(w for w, _ in words), confidence, tuple(words)))
        return transcripts


def count_bigram(transcripts: list[list[int]], size: int, smoothing: float = 0.1) -> torch.Tensor:
    """Smoothed log P(next | previous) from word-index sequences (words count from 1; 0 is start and end)."""
    counts = torch.full((size, size), smoothing)
    for words in transcripts:
        for previous, following in zip([0, *words], [*words, 0]):
            counts[previous, following] += 1
    return (counts / counts.sum(dim=1, keepdim=True)).log()
