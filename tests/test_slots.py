"""Object slots and the slot reasoner: decoding, the soft logic, a tiny reasoner that learns, and slots in the index."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from mmodal.encoders.pixels import letterbox_frame
from mmodal.encoders.slots import SlotConfig, SlotLayout, decode_detections
from mmodal.fusion.reasoner import Parse, ReasonerConfig, SlotReasoner, exact_count
from mmodal.shapes.scene import COLORS, RELATIONS, SHAPES, SIZES, Scene, SceneObject
from mmodal.shapes.semantics import parse_statement
from mmodal.training.slots import detector_targets, ground_truth_slots

ATTRIBUTES = {"color": tuple(COLORS), "shape": SHAPES, "size": SIZES}


def _scene(*objects, width=160, height=100) -> Scene:
    return Scene(width, height, tuple(SceneObject(*o) for o in objects))


HAND_MADE = _scene(("circle", "red", "large", 0.25, 0.5, 0.3), ("square", "blue", "small", 0.75, 0.3, 0.15))


def test_slot_decoding_recovers_a_hand_made_scene():
    """Dense targets of a scene, read back as logits, decode to the scene's objects in the picture's own frame."""
    config = SlotConfig(attributes=ATTRIBUTES, source_size=128, patch_size=8)
    targets = detector_targets([HAND_MADE], config)
    g = config.grid
    out = {"objectness": targets["objectness"] * 20 - 10}
    for name, values in ATTRIBUTES.items():
        one_hot = torch.nn.functional.one_hot(targets[name].clamp_min(0), len(values)).permute(0, 3, 1, 2).float()
        out[name] = one_hot * 10
    xy = targets["box"][:, :2].clamp(1e-4, 1 - 1e-4)
    out["box"] = torch.cat([torch.log(xy / (1 - xy)), targets["box"][:, 2:]], dim=1)
    detections = decode_detections(out, config)
    frame = torch.tensor([letterbox_frame(HAND_MADE.width, HAND_MADE.height)])
    slots = detections.to_slots(SlotLayout(ATTRIBUTES), frame)[0]
    layout = SlotLayout(ATTRIBUTES)
    present = slots[slots[:, 0] > 0]
    assert len(present) == 2 and config.max_slots == len(slots) and g == 16
    for o in HAND_MADE.objects:
        row = min(
            present, key=lambda r: float((r[layout.position][0] - o.cx) ** 2 + (r[layout.position][1] - o.cy) ** 2)
        )
        assert row[layout.position].tolist() == pytest.approx([o.cx, o.cy, o.d], abs=1e-3)
        for name, values in ATTRIBUTES.items():
            assert values[int(row[layout.span(name)].argmax())] == getattr(o, name)


def test_exact_count_is_the_poisson_binomial():
    p = torch.tensor([[0.9, 0.2, 0.5, 0.0]])
    expected = torch.zeros(5)
    for bits in itertools.product([0, 1], repeat=4):
        expected[sum(bits)] += float(np.prod([q if b else 1 - q for q, b in zip(p[0].tolist(), bits)]))
    assert torch.allclose(exact_count(p, 4)[0], expected, atol=1e-6)


def _parse(statement: str, config: ReasonerConfig) -> Parse:
    """The reading a perfect reader would give (one-hot), for checking the logic alone."""
    from mmodal.training.slots import parse_targets

    targets = parse_targets([parse_statement(statement)], config)
    from mmodal.fusion.reasoner import PART_KINDS, ROLES

    kinds = [PART_KINDS[k] for k in targets["kind"][0].tolist()]

    def one_hot(t: torch.Tensor, n: int) -> torch.Tensor:
        return torch.nn.functional.one_hot(t.clamp_min(0), n).float()

    phrases = {
        role: {k: one_hot(targets[f"{role}.{k}"][0], len(v) + 1) for k, v in config.attributes.items()}
        for role in ROLES
    }
    return Parse(kinds, phrases, one_hot(targets["relation"][0], 4), one_hot(targets["count"][0], 5))


@pytest.mark.parametrize(
    "statement",
    [
        "a red circle",
        "a small blue square",
        "a red circle left of a blue square",
        "a blue square left of a red circle",
        "a blue square above a red circle",
        "two red objects",
        "one red object",
        "a red circle and a blue square",
        "a red circle and a red object",
        "a large object and a small object",
        "two circles",
    ],
)
def test_the_logic_decides_as_the_semantics_do(statement):
    """With a perfect reading and the true relations, the reasoner's decision is the spec's truth."""
    config = ReasonerConfig(attributes=ATTRIBUTES, relations=RELATIONS)
    reasoner = SlotReasoner(config, text_dim=8)
    rng = np.random.default_rng(0)
    slots = ground_truth_slots(HAND_MADE, SlotLayout(ATTRIBUTES), 4, rng)[None]
    objects = [
        next(o for o in HAND_MADE.objects if abs(o.cx - float(s[-3])) < 1e-6) if s[0] > 0 else None for s in slots[0]
    ]
    from mmodal.shapes.scene import holds_relation

    related = torch.zeros(1, 4, 4, len(RELATIONS))
    for (i, a), (j, b) in itertools.product(enumerate(objects), repeat=2):
        if a is not None and b is not None and a is not b:
            related[0, i, j] = torch.tensor([float(holds_relation(a, r, b)) for r in RELATIONS])
    decision = reasoner.decide(_parse(statement, config), slots, related)
    assert float(decision.probability[0].detach()) == pytest.approx(float(parse_statement(statement).holds(HAND_MADE)))


@pytest.fixture(scope="module")
def tiny_slot_model(shapes_train_dir):
    from mmodal.training.config import TrainConfig
    from mmodal.training.stages import build_model

    torch.manual_seed(0)
    return build_model(TrainConfig(data=str(shapes_train_dir), model="tiny", speech_steps=0), None)


@pytest.mark.slow
def test_reasoner_on_ground_truth_slots_learns_on_a_tiny_config(tiny_slot_model, shapes_train_dir):
    from mmodal.data.dataset import read_dataset
    from mmodal.training.config import TrainConfig
    from mmodal.training.reading import search_losses
    from mmodal.training.slot_batches import freeze_towers
    from mmodal.training.temperature import Temperature

    model = tiny_slot_model.train()
    trained = freeze_towers(model, ("reasoner.", "slot_pooler."))
    assert trained and all(p.requires_grad is False for p in model.language.parameters())
    scenes = [r.scene for r in read_dataset(shapes_train_dir).images[:24]]
    layout, config = model.slot_encoder.layout, TrainConfig(model="tiny", worded_share=0.0)
    temperature = Temperature()
    optimizer = torch.optim.AdamW(trained, lr=3e-3)
    history = []
    for step in range(60):
        rng = np.random.default_rng(step % 4)  # four fixed batches of texts, seen again and again
        slots = torch.stack([ground_truth_slots(s, layout, model.config.slots.max_slots, rng) for s in scenes])
        losses = search_losses(model, scenes, slots, rng, config, temperature)
        losses.pop("moe_balance")
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append({k: v.item() for k, v in losses.items()})
    assert set(history[0]) == {"parse", "relation", "match", "pool"}
    for key in ("parse", "match"):
        assert np.mean([h[key] for h in history[-4:]]) < 0.7 * np.mean([h[key] for h in history[:4]]), key


def test_spliced_texts_take_every_shared_word_from_the_donor_and_keep_their_own_changed_word():
    from mmodal.shapes.text_edits import one_word_changed
    from mmodal.training.slot_batches import splice_contexts

    text = parse_statement("a small red circle left of a blue square")
    donor = one_word_changed(text, np.random.default_rng(3), "train")
    assert donor is not None and donor.text() != text.text() and not donor.held_out
    ids = torch.tensor([[1, 5, 6, 7, 2], [1, 5, 9, 7, 2], [1, 5, 6, 7, 2]])  # rows: other text, text, donor
    ids[2, 2] = 8  # the donor differs from row 1 in one word
    tokens = torch.arange(3 * 5 * 2, dtype=torch.float32).view(3, 5, 2)
    spliced = splice_contexts(tokens, ids, torch.tensor([1]), donors_from=2)
    assert torch.equal(spliced[0], tokens[0])  # rows not spliced are left as they were
    assert torch.equal(spliced[1, 2], tokens[1, 2])  # the changed word keeps its own token
    for position in (0, 1, 3, 4):
        assert torch.equal(spliced[1, position], tokens[2, position])
    assert torch.equal(tokens[1, 0], torch.tensor([10.0, 11.0]))  # the input is not changed in place


def test_a_question_with_one_word_changed_keeps_its_type_and_never_holds_out_a_pair():
    from mmodal.shapes.semantics import parse_question
    from mmodal.shapes.text_edits import question_word_changed

    rng = np.random.default_rng(5)
    for text in (
        "what is left of the blue square?",
        "how many red circles are there?",
        "is the red star above the cyan circle?",
    ):
        question = parse_question(text)
        for _ in range(20):
            changed = question_word_changed(question, rng, "train")
            assert changed is not None and changed.type == question.type and not changed.held_out
            before, after = question.text().split(), changed.text().split()
            assert len(before) == len(after) and sum(a != b for a, b in zip(before, after)) == 1
    assert question_word_changed(parse_question("how many objects are there?"), rng, "train") is None


def test_slots_go_into_the_index_and_come_back(tiny_slot_model, shapes_test_dir, tmp_path):
    from PIL import Image

    from mmodal.data.dataset import read_dataset
    from mmodal.indexes.collection import ImageIndex
    from mmodal.pipeline import index_collection

    model = tiny_slot_model.eval()
    dataset = read_dataset(shapes_test_dir)
    summary = index_collection(model, [dataset.root / "images"], tmp_path / "index", workers=1, show_progress=False)
    assert summary.indexed == len(dataset.images)
    index = ImageIndex.open(tmp_path / "index", model.identity)
    assert index.manifest.model.slot_dim == model.slot_dim == SlotLayout(ATTRIBUTES).width
    record = dataset.images[3]
    path = str((dataset.root / record.file).resolve())
    hit = next(
        h for h in index.search(model.encode_text(["a red circle"]).numpy(), len(dataset.images))[0] if h.path == path
    )
    stored = index.slots_for([hit.item.id])[hit.item.id]
    _, slots = model.encode_image_slots([Image.open(path)])
    expected = slots[0][slots[0][:, 0] > 0].numpy()
    assert stored.shape == expected.shape
    np.testing.assert_allclose(stored, expected, rtol=2e-3, atol=2e-3)
    index.close()


def test_turned_hues_keep_grey_and_brightness_and_a_third_of_a_turn_cycles_the_channels():
    from mmodal.training.perception import turn_hues

    torch.manual_seed(0)
    pixels = torch.rand(3, 3, 5, 5) * 2 - 0.5  # normalised, inside what a picture can hold
    assert torch.allclose(turn_hues(pixels, torch.zeros(3)), pixels, atol=1e-6)
    third = turn_hues(pixels, torch.full((3,), 2 * math.pi / 3))
    assert torch.allclose(third, pixels[:, [2, 0, 1]], atol=1e-5)  # red → green → blue → red
    grey = torch.full((1, 3, 2, 2), 0.7)
    assert torch.allclose(turn_hues(grey, torch.tensor([1.1])), grey, atol=1e-6)
    turned = turn_hues(pixels, torch.tensor([0.5, 1.5, 2.5]))
    assert torch.allclose(turned.mean(1), pixels.mean(1), atol=0.05)  # channel mean: brightness, up to clipping
    assert not torch.allclose(turned, pixels, atol=0.05)
