"""Training the object-slot half of the model from scene graphs: dense detector targets, crop targets,
noisy ground-truth slots and the reader's parse targets, and the losses that use them.

The scene graph says where every object is and what it is, and the semantics module says what every text
means, so each target here is exact; the model learns to see and to read from them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mmodal.encoders.pixels import letterbox_frame
from mmodal.encoders.slots import SlotConfig, SlotLayout
from mmodal.fusion.reasoner import PART_KINDS, ROLES, ReasonerConfig
from mmodal.shapes.scene import Scene, holds_relation
from mmodal.shapes.semantics import CountPhrase, ObjectPhrase, RelationPhrase, Statement

IGNORE = -100


# ------------------------------------------------------------------------------------------ perception


def detector_targets(scenes: list[Scene], config: SlotConfig) -> dict[str, torch.Tensor]:
    """Per grid cell: objectness, each attribute's class (IGNORE where no object is centred), box (x, y, log d)."""
    g, b = config.grid, len(scenes)
    objectness = torch.zeros(b, g, g)
    attributes = {k: torch.full((b, g, g), IGNORE, dtype=torch.long) for k in config.attributes}
    box = torch.zeros(b, 3, g, g)
    for i, scene in enumerate(scenes):
        x0, y0, w, h = letterbox_frame(scene.width, scene.height)
        for o in scene.objects:
            x, y = (x0 + o.cx * w) * g, (y0 + o.cy * h) * g
            col, row = min(g - 1, int(x)), min(g - 1, int(y))
            objectness[i, row, col] = 1.0
            for k, values in config.attributes.items():
                attributes[k][i, row, col] = values.index(getattr(o, k))
            box[i, :, row, col] = torch.tensor([x - col, y - row, float(np.log(o.d * w))])
    return {"objectness": objectness, "box": box, **attributes}


def detector_loss(out: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Focal objectness over all cells; attributes and box at the cells that hold an object's centre."""
    logits, target = out["objectness"].float(), targets["objectness"]
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    focal = (ce * ((1 - p) * target + p * (1 - target)) ** 2).sum() / target.sum().clamp_min(1)
    positive = target.bool()  # (B, G, G)
    attributes = sum(
        F.cross_entropy(out[k].float().permute(0, 2, 3, 1)[positive], t[positive])
        for k, t in targets.items()
        if k not in ("objectness", "box")
    )
    box_pred = out["box"].float().permute(0, 2, 3, 1)[positive]  # (M, 3)
    box_true = targets["box"].permute(0, 2, 3, 1)[positive]
    box = F.l1_loss(torch.sigmoid(box_pred[:, :2]), box_true[:, :2]) + F.l1_loss(box_pred[:, 2], box_true[:, 2])
    return {"objectness": focal, "attributes": attributes, "box": box}


def crop_boxes(
    scenes: list[Scene], config: SlotConfig, rng: np.random.Generator, jitter: float = 0.15
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """Crop centres (B, N, 2) and sides (B, N) around each object, jittered as a detector would miss them,
    with (image, object) of each real crop; rows past an image's objects repeat its first object."""
    n = max(len(s.objects) for s in scenes)
    centres, sides, which = torch.zeros(len(scenes), n, 2), torch.zeros(len(scenes), n), []
    for i, scene in enumerate(scenes):
        x0, y0, w, h = letterbox_frame(scene.width, scene.height)
        for j in range(n):
            o = scene.objects[min(j, len(scene.objects) - 1)]
            d = o.d * w
            shift = rng.normal(0, jitter / 2, 2) * d
            centres[i, j] = torch.tensor([x0 + o.cx * w + shift[0], y0 + o.cy * h + shift[1]])
            sides[i, j] = d * config.crop_context * float(np.exp(rng.normal(0, jitter)))
            if j < len(scene.objects):
                which.append((i, j))
    return centres, sides, which


# ---------------------------------------------------------------------------------------- ground truth


def ground_truth_slots(
    scene: Scene, layout: SlotLayout, max_slots: int, rng: np.random.Generator, noise: float = 0.0
) -> torch.Tensor:
    """The scene's objects as slot rows (max_slots, F), shuffled; with ``noise``, softened attributes, jittered
    positions, uncertain presence and now and then a faint spurious slot, as a detector would give."""
    rows = []
    for o in scene.objects:
        probabilities = {}
        for name, values in layout.attributes.items():
            p = np.zeros(len(values), dtype=np.float32)
            p[values.index(getattr(o, name))] = 1.0
            if noise:
                p = (1 - noise * rng.random()) * p + noise * rng.random() * rng.dirichlet(np.ones(len(values)))
                p = p / p.sum()
            probabilities[name] = torch.from_numpy(p.astype(np.float32))
        position = np.array([o.cx, o.cy, o.d], dtype=np.float32) + (rng.normal(0, 0.01 * noise, 3) if noise else 0)
        presence = 1.0 - (0.3 * noise * rng.random() if noise else 0.0)
        rows.append(layout.pack(torch.tensor(presence), probabilities, torch.from_numpy(position.astype(np.float32))))
    if noise and rng.random() < 0.3 and len(rows) < max_slots:
        fake = {
            n: torch.from_numpy(rng.dirichlet(np.ones(len(v))).astype(np.float32)) for n, v in layout.attributes.items()
        }
        position = torch.from_numpy(rng.random(3).astype(np.float32) * np.array([1, 1, 0.4], dtype=np.float32))
        rows.append(layout.pack(torch.tensor(0.3 * noise * rng.random()), fake, position))
    order = rng.permutation(len(rows))
    slots = torch.zeros(max_slots, layout.width)
    for i, k in enumerate(order[:max_slots]):
        slots[i] = rows[k]
    return slots


def phrase_targets(phrase: ObjectPhrase | None, attributes: dict[str, tuple[str, ...]]) -> dict[str, int]:
    if phrase is None:
        return {k: IGNORE for k in attributes}
    return {k: 0 if getattr(phrase, k) is None else 1 + v.index(getattr(phrase, k)) for k, v in attributes.items()}


def parse_targets(statements: list[Statement], config: ReasonerConfig) -> dict[str, torch.Tensor]:
    """What the reader must read from each statement: (B, P) targets per head, IGNORE where a part has none."""
    heads = ["kind", "relation", "count"] + [f"{r}.{k}" for r in ROLES for k in config.attributes]
    targets = {h: torch.full((len(statements), config.max_parts), IGNORE, dtype=torch.long) for h in heads}
    targets["kind"].fill_(PART_KINDS.index("none"))
    for b, statement in enumerate(statements):
        for p, part in enumerate(statement.parts[: config.max_parts]):
            a = other = None
            if isinstance(part, RelationPhrase):
                kind, a, other = "relation", part.subject, part.other
                targets["relation"][b, p] = config.relations.index(part.relation)
            elif isinstance(part, CountPhrase):
                kind, a = "count", part.phrase
                targets["count"][b, p] = part.count
            else:
                kind, a = "object", part
            targets["kind"][b, p] = PART_KINDS.index(kind)
            for role, phrase in (("a", a), ("b", other)):
                for k, t in phrase_targets(phrase, config.attributes).items():
                    targets[f"{role}.{k}"][b, p] = t
    return targets


def relation_targets(scenes: list[Scene], relations: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """For every ordered pair of distinct objects in each scene: (positions (M, 2, 3), labels (M, R))."""
    positions, labels = [], []
    for scene in scenes:
        for a in scene.objects:
            for b in scene.objects:
                if a is b:
                    continue
                positions.append([[a.cx, a.cy, a.d], [b.cx, b.cy, b.d]])
                labels.append([float(holds_relation(a, r, b)) for r in relations])
    return torch.tensor(positions), torch.tensor(labels)
