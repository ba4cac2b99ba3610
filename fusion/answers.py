"""Answers from object slots: the question is read, the slots are weighed, and the evidence becomes the prefix
after which the language core writes the answer.

Reading is learned, as for search queries: a query over the language core's tokens (modal attention) names
the question's type, the phrases it refers to (subject "a", the other object "b") and the relation. Weighing is
the slot reasoner's own soft logic, shared with search: how well each slot matches each phrase, and how likely
each relation holds between two slots. From them come the evidence a question may need, for every question
alike: whether the subject exists, how many slots it matches (exactly), whether it stands in the relation to
the other object, and the attributes of the slot the subject picks and of the slot in the relation to the other
object. Which of these answers the question, and in which words, is learned by the prefix and the decoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from mmodal.fusion.reasoner import ANY, ROLES, QueryReader, ReasonerConfig, SlotReasoner, exact_count

FOCUS = ("subject", "pair", "related")  # which slots a question's answer looks at, for drawing them


@dataclass
class AnswerConfig:
    """The question reader's sizes, the question types it tells apart, and what each type looks at."""

    question_types: tuple[str, ...] = ()
    focus: dict[str, str] = field(default_factory=dict)  # type → one of FOCUS
    width: int = 128
    num_layers: int = 2
    num_heads: int = 4
    prefix_tokens: int = 4  # positions of the language core's prefix
    max_answer_tokens: int = 8  # answer positions the word bias knows
    hidden: int = 256


@dataclass
class Evidence:
    """What the slots say about a batch of questions (B rows), whatever each question asks."""

    question_type: torch.Tensor  # (B, types) the reading of the question's type
    exists: torch.Tensor  # (B, 1) that some slot matches the subject
    count: torch.Tensor  # (B, max_count + 1) how many slots match it, exactly
    holds: torch.Tensor  # (B, 1) that the subject stands in the relation to the other object
    subject: torch.Tensor  # (B, values) the attributes of the slot the subject picks
    related: torch.Tensor  # (B, values) the attributes of the slot in the relation to the other object
    looked_at: torch.Tensor  # (B, N) how much each slot counts in the answer, in [0, 1]

    @property
    def features(self) -> torch.Tensor:
        return torch.cat([self.question_type, self.exists, self.count, self.holds, self.subject, self.related], -1)


class AnswerReasoner(nn.Module):
    """Question tokens and object slots → the language core's prefix (B, P, H)."""

    def __init__(
        self, config: AnswerConfig, slots_reasoner: ReasonerConfig, text_dim: int, hidden_size: int, vocab_size: int
    ):
        super().__init__()
        if not config.question_types:
            raise ValueError("AnswerConfig needs the question types it answers")
        self.config = config
        self.attributes = slots_reasoner.attributes
        heads = {"question_type": len(config.question_types), "relation": len(slots_reasoner.relations)}
        for role in ROLES:
            heads.update({f"{role}.{k}": len(v) + 1 for k, v in self.attributes.items()})
        reading = replace(
            slots_reasoner, width=config.width, num_layers=config.num_layers, num_heads=config.num_heads, max_parts=1
        )
        self.reader = QueryReader(reading, text_dim, heads)
        values = sum(len(v) for v in self.attributes.values())
        evidence_dim = len(config.question_types) + 1 + (slots_reasoner.max_count + 1) + 1 + 2 * values
        self.max_count = slots_reasoner.max_count
        self.to_prefix = nn.Sequential(
            nn.Linear(evidence_dim, config.hidden),
            nn.GELU(),
            nn.Linear(config.hidden, config.hidden),
            nn.GELU(),
            nn.Linear(config.hidden, config.prefix_tokens * hidden_size),
        )
        self.positions = nn.Parameter(torch.zeros(config.prefix_tokens, hidden_size))
        self.norm = nn.LayerNorm(hidden_size)
        # The core stays frozen (search reads with it), so on its own it writes after the colour of a two-word
        # answer the shape its own training made likely. The evidence also shifts its word scores directly, by
        # answer position, and a learned sharpness scales its logits, whose softmax is too flat after this prefix.
        self.word_bias = nn.Sequential(
            nn.Linear(evidence_dim + config.max_answer_tokens, config.hidden),
            nn.GELU(),
            nn.Linear(config.hidden, vocab_size),
        )
        nn.init.zeros_(self.word_bias[-1].weight)
        nn.init.zeros_(self.word_bias[-1].bias)
        self.log_sharpness = nn.Parameter(torch.zeros(()))
        focus = [FOCUS.index(config.focus.get(t, "subject")) for t in config.question_types]
        self.register_buffer("focus", torch.nn.functional.one_hot(torch.tensor(focus), len(FOCUS)).float(), False)

    def answer_scores(self, core_logits: torch.Tensor, features: torch.Tensor, first_position: int) -> torch.Tensor:
        """The core's logits (B, T, V) at answer positions ``first_position`` … → the answer's word log-probabilities,
        sharpened and shifted by the evidence ``features`` (B, E)."""
        b, t, _ = core_logits.shape
        positions = torch.arange(first_position, first_position + t, device=core_logits.device)
        positions = positions.clamp(max=self.config.max_answer_tokens - 1)
        step = torch.nn.functional.one_hot(positions, self.config.max_answer_tokens).float()  # (T, S)
        inputs = torch.cat([features[:, None, :].expand(b, t, -1), step[None].expand(b, -1, -1)], -1)
        return torch.log_softmax(core_logits.float() * self.log_sharpness.exp() + self.word_bias(inputs), -1)

    def read(self, tokens: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Question tokens (B, T, H) → {head: (B, classes)} logits."""
        return {k: v[:, 0] for k, v in self.reader(tokens, mask).items()}

    def evidence(self, logits: dict[str, torch.Tensor], slots: torch.Tensor, matcher: SlotReasoner) -> Evidence:
        """The reading against each question's image slots (B, N, F), through ``matcher``'s soft logic."""
        layout = matcher.layout
        presence = matcher.presence(slots)
        matches = {}
        for role in ROLES:
            match = presence
            for name in self.attributes:
                p = logits[f"{role}.{name}"].float().softmax(-1)  # (B, V+1)
                values = slots[..., layout.span(name)]  # (B, N, V)
                match = match * (p[:, None, ANY] + (values * p[:, None, 1:]).sum(-1))
            matches[role] = match  # (B, N)
        a, b = matches["a"], matches["b"]
        n = slots.shape[1]
        relations = torch.sigmoid(matcher.relation_scorer(slots[..., layout.position]).float())  # (B, N, N, R)
        related = (relations * logits["relation"].float().softmax(-1)[:, None, None, :]).sum(-1)
        related = related * (1 - torch.eye(n, device=slots.device))  # a slot is not related to itself
        exists = 1 - torch.prod(1 - a, dim=1, keepdim=True)
        count = exact_count(a, self.max_count)
        subject = a / a.sum(1, keepdim=True).clamp_min(1e-6)
        other = b / b.sum(1, keepdim=True).clamp_min(1e-6)
        holds = torch.einsum("bi,bj,bij->b", subject, other, related).unsqueeze(1)
        in_relation = presence * torch.einsum("bj,bij->bi", other, related)
        in_relation = in_relation / in_relation.sum(1, keepdim=True).clamp_min(1e-6)

        def attributes_of(weights: torch.Tensor) -> torch.Tensor:
            return torch.cat(
                [torch.einsum("bn,bnv->bv", weights, slots[..., layout.span(k)]) for k in self.attributes], -1
            )

        kind = logits["question_type"].float().softmax(-1)
        peak = in_relation / in_relation.amax(1, keepdim=True).clamp_min(1e-6)
        looks = torch.stack([a, torch.maximum(a, b), peak], -1)  # (B, N, FOCUS)
        looked_at = (looks * (kind @ self.focus)[:, None, :]).sum(-1)
        return Evidence(kind, exists, count, holds, attributes_of(subject), attributes_of(in_relation), looked_at)

    def prefix(self, evidence: Evidence) -> torch.Tensor:
        """The evidence → the language core's prefix (B, P, H)."""
        features = evidence.features
        prefix = self.to_prefix(features).view(len(features), self.config.prefix_tokens, -1)
        return self.norm(prefix + self.positions)

    def forward(
        self, tokens: torch.Tensor, mask: torch.Tensor, slots: torch.Tensor, matcher: SlotReasoner
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], Evidence]:
        """→ the prefix (B, P, H), the reader's logits (for its auxiliary targets) and the evidence."""
        logits = self.read(tokens, mask)
        evidence = self.evidence(logits, slots, matcher)
        return self.prefix(evidence), logits, evidence
