"""The slot reasoner: reads a query into parts and phrases, then decides, for each image's object slots,
how likely the query holds.

Reading is learned: part queries attend over the language core's tokens (modal attention) and name each
part's kind, each phrase's attribute values (or "any"), the relation and the count. Deciding is generic
soft logic over the slots: a phrase matches a slot with the product, over attributes, of the probability
that they agree; a relation between two slots is scored by a learned network on their offset; parts are
filled by distinct slots (the best assignment of phrases to slots), and an exact count is the
Poisson-binomial probability over slots. Nothing about any particular world is written here: the
attribute values, relations and counts come from the config, and what they mean is learned.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from mmodal.encoders.slots import SlotLayout

PART_KINDS = ("none", "object", "count", "relation")  # what one part of a query asks for
ROLES = ("a", "b")  # a part's phrases: its subject and, for a relation, the other object
ANY = 0  # index of "any value" in each phrase attribute's distribution
PRESENCE_RATE = 10.0


@dataclass
class ReasonerConfig:
    """Sizes of the query reader, and the vocabularies of what it reads."""

    attributes: dict[str, tuple[str, ...]] = field(default_factory=dict)  # as the slots hold them
    relations: tuple[str, ...] = ()  # relation words, e.g. "left of"
    max_count: int = 4  # counts 0..max_count
    max_parts: int = 4  # parts joined by "and" that one query may hold
    width: int = 128
    num_layers: int = 2  # part-query decoder layers over the query tokens
    num_heads: int = 4
    max_tokens: int = 48  # positions the reader knows


@dataclass
class Parse:
    """A query's reading, for one query: part kinds and, per part, soft phrase and relation distributions."""

    kinds: list[str]  # per part, one of PART_KINDS (decided)
    phrases: dict[str, dict[str, torch.Tensor]]  # role → attribute → (P, V+1) probabilities, index 0 = any
    relation: torch.Tensor  # (P, R)
    count: torch.Tensor  # (P, max_count + 1)

    @property
    def asks_for_something(self) -> bool:
        """Whether the query holds of some pictures and not of others: it counts, relates, or names a shape,
        colour or size. "a", "an object" or "a picture" hold of every picture: they ask for nothing."""
        for part, kind in enumerate(self.kinds):
            if kind in ("count", "relation"):
                return True
            if kind == "object" and any(bool(p[part].argmax() != 0) for p in self.phrases["a"].values()):
                return True
        return False


def reading_heads(config: ReasonerConfig) -> dict[str, int]:
    """A query's heads and their classes: part kind, relation, count and each role's phrase attributes."""
    heads = {"kind": len(PART_KINDS), "relation": len(config.relations), "count": config.max_count + 1}
    for role in ROLES:
        heads.update({f"{role}.{k}": len(v) + 1 for k, v in config.attributes.items()})
    return heads


class QueryReader(nn.Module):
    """Language-core tokens → per-part logits: by default kind, phrase attributes per role, relation, count."""

    def __init__(self, config: ReasonerConfig, text_dim: int, heads: dict[str, int] | None = None):
        super().__init__()
        w = config.width
        self.config = config
        self.text_in = nn.Linear(text_dim, w)
        self.positions = nn.Parameter(torch.zeros(1, config.max_tokens, w))
        self.part_queries = nn.Parameter(torch.zeros(1, config.max_parts, w))
        nn.init.normal_(self.positions, std=0.02)
        nn.init.normal_(self.part_queries, std=0.02)
        encoder = nn.TransformerEncoderLayer(w, config.num_heads, 4 * w, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(encoder, 1, enable_nested_tensor=False)
        decoder = nn.TransformerDecoderLayer(w, config.num_heads, 4 * w, dropout=0.0, batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(decoder, config.num_layers)
        self.norm = nn.LayerNorm(w)
        heads = reading_heads(config) if heads is None else heads
        self.heads = nn.ModuleDict({k.replace(".", "_"): nn.Linear(w, n) for k, n in heads.items()})
        self.head_names = {k.replace(".", "_"): k for k in heads}

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """tokens (B, T, H), mask (B, T) → {head: (B, P, classes)} logits."""
        t = min(tokens.shape[1], self.config.max_tokens)
        tokens, mask = tokens[:, :t], mask[:, :t]
        x = self.text_in(tokens) + self.positions[:, :t]  # (B, T, W)
        padding = ~mask.bool()
        x = self.encoder(x, src_key_padding_mask=padding)
        parts = self.decoder(self.part_queries.expand(len(x), -1, -1), x, memory_key_padding_mask=padding)
        parts = self.norm(parts)  # (B, P, W)
        return {self.head_names[k]: head(parts) for k, head in self.heads.items()}


class RelationScorer(nn.Module):
    """Probability of each relation between two slots, from their centres' offset and their diameters."""

    def __init__(self, n_relations: int, hidden: int = 64):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(4, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU())
        self.out = nn.Linear(hidden, n_relations)

    def forward(self, position: torch.Tensor) -> torch.Tensor:
        """position (K, N, 3) = cx, cy, d → logits (K, N, N, R) that slot i stands in relation r to slot j."""
        k, n, _ = position.shape
        a = position.unsqueeze(2).expand(k, n, n, 3)
        b = position.unsqueeze(1).expand(k, n, n, 3)
        offset = torch.cat([a[..., :2] - b[..., :2], a[..., 2:], b[..., 2:]], dim=-1)  # (K, N, N, 4)
        return self.out(self.mlp(offset * 4.0))


@lru_cache(maxsize=64)
def _permutations(n_slots: int, n_roles: int) -> tuple[tuple[int, ...], ...]:
    return tuple(itertools.permutations(range(n_slots), n_roles))


def _assignments(n_slots: int, n_roles: int, device: torch.device) -> torch.Tensor:
    """Every way to give ``n_roles`` phrases distinct slots: (A, n_roles) slot indices.

    Built afresh each call: a tensor cached from an inference-mode call could not take part in training.
    """
    perms = _permutations(n_slots, n_roles)
    return torch.tensor(perms, dtype=torch.long, device=device).view(len(perms), n_roles)


def exact_count(matches: torch.Tensor, max_count: int) -> torch.Tensor:
    """(K, N) independent match probabilities → (K, max_count + 1) probability of exactly c matches."""
    k, n = matches.shape
    dist = matches.new_zeros(k, n + 1)
    dist[:, 0] = 1.0
    for i in range(n):
        m = matches[:, i : i + 1]
        dist = torch.cat([dist[:, :1] * (1 - m), dist[:, 1:] * (1 - m) + dist[:, :-1] * m], dim=1)
    if n < max_count:
        dist = torch.cat([dist, dist.new_zeros(k, max_count - n)], dim=1)
    return dist[:, : max_count + 1]


@dataclass
class Decision:
    """How likely a query holds in each of K images, and which slots filled its phrases."""

    probability: torch.Tensor  # (K,)
    roles: list[tuple[int, str]]  # (part, role) of each filled phrase, in order
    assignment: torch.Tensor  # (K, len(roles)) slot index filling each phrase in the best assignment
    counted: list[tuple[int, torch.Tensor]]  # (part, (K, N) match probability) of each counted phrase


class SlotReasoner(nn.Module):
    """Reads queries (QueryReader) and decides them over object slots (soft logic with a learned relation)."""

    def __init__(self, config: ReasonerConfig, text_dim: int):
        super().__init__()
        if not config.attributes or not config.relations:
            raise ValueError("ReasonerConfig needs the slot attributes and the relation words")
        self.config = config
        self.layout = SlotLayout(config.attributes)
        self.reader = QueryReader(config, text_dim)
        self.relation_scorer = RelationScorer(len(config.relations))
        # Presence calibration: a detector's objectness is not a probability (focal loss keeps it low on crowded
        # scenes), and exact counts need one. Both are scaled by PRESENCE_RATE so a few hundred steps can move them.
        self.presence_scale = nn.Parameter(torch.full((), 1.0 / PRESENCE_RATE))
        self.presence_shift = nn.Parameter(torch.zeros(()))

    def presence(self, slots: torch.Tensor) -> torch.Tensor:
        """Calibrated probability that each slot is an object: (…, N); empty slots stay 0."""
        raw = slots[..., 0]
        logit = torch.logit(raw.clamp(1e-4, 1 - 1e-4))
        calibrated = torch.sigmoid(PRESENCE_RATE * (self.presence_scale * logit + self.presence_shift))
        return torch.where(raw >= 1, raw, calibrated * (raw > 0).to(calibrated.dtype))

    def read(self, tokens: torch.Tensor, mask: torch.Tensor) -> list[Parse]:
        """Language-core tokens of B queries → B parses (kinds decided, the rest soft)."""
        logits = self.reader(tokens, mask)
        kinds = logits["kind"].argmax(-1).tolist()
        return [self.parse_from_logits(logits, b, [PART_KINDS[k] for k in kinds[b]]) for b in range(len(kinds))]

    def parse_from_logits(self, logits: dict[str, torch.Tensor], b: int, kinds: list[str]) -> Parse:
        """Row ``b`` of the reader's logits as a parse with the given part kinds (decided or taught)."""
        phrases = {
            role: {k: logits[f"{role}.{k}"][b].float().softmax(-1) for k in self.config.attributes} for role in ROLES
        }
        return Parse(
            kinds=kinds,
            phrases=phrases,
            relation=logits["relation"][b].float().softmax(-1),
            count=logits["count"][b].float().softmax(-1),
        )

    def phrase_match(self, phrase: dict[str, torch.Tensor], slots: torch.Tensor) -> torch.Tensor:
        """One phrase's attribute distributions (V+1 each) against slots (K, N, F) → (K, N) match probability."""
        match = self.presence(slots)
        for name, p in phrase.items():
            values = slots[..., self.layout.span(name)]  # (K, N, V)
            match = match * (p[ANY] + values @ p[1:])
        return match

    def decide(self, parse: Parse, slots: torch.Tensor, relation_probs: torch.Tensor | None = None) -> Decision:
        """One query's parse against K images' slots (K, N, F) → the probability that it holds in each."""
        k, n, _ = slots.shape
        if relation_probs is None:
            relation_probs = torch.sigmoid(self.relation_scorer(slots[..., self.layout.position]).float())
        roles: list[tuple[int, str]] = []
        matches: list[torch.Tensor] = []
        pairs: list[tuple[int, int, torch.Tensor]] = []
        counted: list[tuple[int, torch.Tensor]] = []
        probability = slots.new_ones(k)
        for part, kind in enumerate(parse.kinds):
            if kind == "none":
                continue
            a = self.phrase_match({name: p[part] for name, p in parse.phrases["a"].items()}, slots)
            if kind == "count":
                counts = exact_count(a, self.config.max_count)  # (K, C)
                probability = probability * (counts @ parse.count[part])
                counted.append((part, a))
                continue
            roles.append((part, "a"))
            matches.append(a)
            if kind == "relation":
                b = self.phrase_match({name: p[part] for name, p in parse.phrases["b"].items()}, slots)
                roles.append((part, "b"))
                matches.append(b)
                related = relation_probs @ parse.relation[part]  # (K, N, N)
                pairs.append((len(matches) - 2, len(matches) - 1, related))
        assignment = torch.zeros(k, len(roles), dtype=torch.long, device=slots.device)
        if roles:
            if len(roles) > n:
                return Decision(probability * 0, roles, assignment, counted)
            ways = _assignments(n, len(roles), slots.device)  # (A, R)
            score = slots.new_ones(k, len(ways))
            for r, match in enumerate(matches):
                score = score * match[:, ways[:, r]]
            for i, j, related in pairs:
                score = score * related[:, ways[:, i], ways[:, j]]
            best, which = score.max(dim=1)
            probability = probability * best
            assignment = ways[which]
        return Decision(probability, roles, assignment, counted)


def parse_loss(logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of every reader head against its target; -100 marks what a part does not have."""
    losses = [
        F.cross_entropy(logits[k].flatten(0, 1).float(), t.flatten(), ignore_index=-100)
        for k, t in targets.items()
        if (t != -100).any()
    ]
    return torch.stack(losses).mean()
