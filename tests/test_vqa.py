"""Visual question answering: the fused prefix, the MoE core as decoder, confidence, answer maps."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from encoders.errors import TowerInputError
from encoders.tokenizer import build_tokenizer
from mmodal.cli import main
from mmodal.config import tiny_config
from mmodal.evaluate import expected_calibration_error
from mmodal.model import MModalModel
from mmodal.training.loop import known_words

COLOURS = {"red": (220, 40, 40), "blue": (50, 90, 230), "green": (40, 180, 60), "white": (245, 245, 245)}
QUESTION = "what color is the square?"


def _picture(colour: tuple[int, int, int], size=(48, 40)) -> Image.Image:
    image = Image.new("RGB", size, (20, 20, 20))
    image.paste(colour, (10, 8, 30, 28))
    return image


@pytest.fixture(scope="module")
def trained():
    """A tiny model taught to name the square's colour in four pictures."""
    torch.manual_seed(0)
    corpus = [f"{QUESTION} {c}" for c in COLOURS] * 30 + ["is there a star? yes no"] * 10
    config = tiny_config()
    config.text.known_words = known_words(corpus)
    model = MModalModel(config, build_tokenizer(corpus, vocab_size=300))
    images = [_picture(c) for c in COLOURS.values()]
    pixels = model.preprocess_images(images)
    q_ids, q_mask = model.tokenize([QUESTION] * len(images))
    a_ids, a_mask = model.tokenize(list(COLOURS))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(150):
        loss, aux = model.answer_loss(model.image_tokens(pixels), q_ids, q_mask, a_ids, a_mask)
        optimizer.zero_grad()
        (loss + aux).backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return model, images, losses


def test_a_tiny_model_overfits_a_handful_of_questions(trained):
    model, images, losses = trained
    assert losses[-1] < 0.1 * losses[0]
    answers = model.ask(images, [QUESTION] * len(images))
    assert [a.answer for a in answers] == list(COLOURS)
    assert all(0.5 < a.confidence <= 1.0 for a in answers)
    for a in answers:
        assert all(0 <= c <= a.confidence for _, c in a.alternatives)
        assert a.answer not in [alt for alt, _ in a.alternatives]
        assert a.attention.shape == (model.config.image.grid,) * 2 and np.isfinite(a.attention).all()


def test_generation_is_deterministic(trained):
    model, images, _ = trained
    first = [a.to_dict() for a in model.ask(images, [QUESTION] * len(images))]
    second = [a.to_dict() for a in model.ask(images, [QUESTION] * len(images))]
    assert first == second


def test_bad_questions_get_clear_errors_or_low_confidence(trained):
    model, images, _ = trained
    with pytest.raises(TowerInputError, match="empty text"):
        model.ask(images[:1], ["  "])
    with pytest.raises(TowerInputError, match="too long"):
        model.ask(images[:1], ["what " * 2000])
    foreign = model.ask(images[:1], ["この四角は何色ですか?"])[0]
    known = model.ask(images[:1], [QUESTION])[0]
    assert 0.0 <= foreign.confidence < 0.5 < known.confidence, (foreign, known)
    assert "does not know the words" in foreign.note and known.note is None
    # A made-up word costs confidence, and is named.
    garbled = model.ask(images[:1], [QUESTION.replace("square", "qzxv")])[0]
    assert garbled.confidence < known.confidence and "qzxv" in garbled.note


def test_ask_command_prints_json_and_writes_the_answer_map(trained, tmp_path, capsys, caplog):
    model, images, _ = trained
    model.save_pretrained(tmp_path / "model")
    picture = tmp_path / "blue.png"
    images[1].save(picture)
    heat = tmp_path / "map.png"
    argv = ["ask", str(picture), QUESTION, "--model", str(tmp_path / "model"), "--json", "--explain", str(heat)]
    assert main(argv) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["answer"] == "blue" and set(answer) == {"answer", "confidence", "alternatives"}
    with Image.open(heat) as drawn:
        assert drawn.size == images[1].size
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really")
    assert main(["ask", str(broken), QUESTION, "--model", str(tmp_path / "model")]) == 1
    assert f"cannot answer about {broken}" in caplog.text


def test_expected_calibration_error():
    confidence = np.array([0.9] * 10 + [0.3] * 10)
    calibrated = np.array([1] * 9 + [0] + [1] * 3 + [0] * 7, dtype=float)
    assert expected_calibration_error(confidence, calibrated) == pytest.approx(0.0, abs=1e-9)
    always_wrong = np.zeros(20)
    assert expected_calibration_error(confidence, always_wrong) == pytest.approx(0.6)


def test_trains_on_a_vqav2_dataset_from_disk(tmp_path, capsys):
    vqa = _vqav2_files(tmp_path)
    out = tmp_path / "run"
    argv = ["train", "--recipe", "vqa", "--model", "tiny", "--steps", "3", "--batch-size", "4", "--out", str(out)]
    argv += [*vqa, "--device", "cpu"]
    assert main(argv) == 0
    model = MModalModel.from_pretrained(out / "model")
    answer = model.ask([_picture(COLOURS["red"])], [QUESTION])[0]
    assert isinstance(answer.answer, str) and 0 <= answer.confidence <= 1
    assert main(argv[:-6] + ["--vqa-questions", str(tmp_path / "q.json"), "--out", str(tmp_path / "x")]) == 1


@pytest.mark.slow
def test_question_only_and_dense_baselines_train_and_evaluate(shapes_train_dir, shapes_test_dir, tmp_path, capsys):
    out = tmp_path / "blind"
    argv = ["train", "--recipe", "vqa", "--model", "dense", "--blind", "--steps", "2", "--batch-size", "4"]
    assert main([*argv, "--data", str(shapes_train_dir), "--out", str(out), "--device", "cpu"]) == 0
    model = MModalModel.from_pretrained(out / "model")
    assert model.config.text.n_routed_experts == 0
    capsys.readouterr()
    assert main(["eval", "--model", str(out / "model"), "--data", str(shapes_test_dir), "--blind", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert 0 <= report["vqa"]["all"]["accuracy"] <= 1 and "moe" not in report


# ------------------------------------------------------------------------------- answers from object slots


def _reading(reasoner_config, question_type: str, a: dict, b: dict | None = None, relation: str | None = None):
    """Reader logits (one row) that read exactly this: the type, phrases a and b, the relation."""
    from mmodal.shapes.semantics import QUESTION_TYPES

    big = 30.0
    logits = {"question_type": torch.zeros(1, len(QUESTION_TYPES))}
    logits["question_type"][0, QUESTION_TYPES.index(question_type)] = big
    relations = reasoner_config.relations
    logits["relation"] = torch.zeros(1, len(relations))
    logits["relation"][0, relations.index(relation or relations[0])] = big
    for role, phrase in (("a", a), ("b", b or {})):
        for name, values in reasoner_config.attributes.items():
            row = torch.zeros(1, len(values) + 1)
            row[0, 0 if name not in phrase else 1 + values.index(phrase[name])] = big
            logits[f"{role}.{name}"] = row
    return logits


def test_slot_evidence_counts_checks_relations_and_reads_the_referent(model):
    """The answer reasoner's soft logic over ground-truth slots of a known scene says what the scene says."""
    from fusion.answers import AnswerConfig, AnswerReasoner
    from mmodal.shapes.semantics import QUESTION_TYPES, Scene
    from mmodal.training.slots import ground_truth_slots

    scene = Scene.from_dict(
        {
            "width": 128,
            "height": 128,
            "objects": [
                {"shape": "circle", "color": "red", "size": "small", "cx": 0.2, "cy": 0.5, "d": 0.15, "rotation": 0},
                {"shape": "square", "color": "blue", "size": "large", "cx": 0.75, "cy": 0.5, "d": 0.3, "rotation": 0},
                {"shape": "circle", "color": "white", "size": "small", "cx": 0.8, "cy": 0.1, "d": 0.15, "rotation": 0},
            ],
        }
    )
    reasoner = model.reasoner
    layout, n = reasoner.layout, model.config.slots.max_slots
    slots = ground_truth_slots(scene, layout, n, np.random.default_rng(0)).unsqueeze(0)
    answers = AnswerReasoner(AnswerConfig(question_types=QUESTION_TYPES), reasoner.config, 8, 8, 16)
    colors = reasoner.config.attributes["color"]

    def evidence(*args, **kwargs):
        with torch.no_grad():
            return answers.evidence(_reading(reasoner.config, *args, **kwargs), slots, reasoner)

    assert evidence("count", {"shape": "circle"}).count.argmax().item() == 2
    assert evidence("count", {}).count.argmax().item() == 3  # "how many objects"
    assert evidence("exist", {"color": "red", "shape": "circle"}).exists.item() > 0.9
    assert evidence("exist", {"color": "green", "shape": "star"}).exists.item() < 0.1
    left = evidence("relation", {"color": "red", "shape": "circle"}, {"color": "blue", "shape": "square"}, "left of")
    right = evidence("relation", {"color": "red", "shape": "circle"}, {"color": "blue", "shape": "square"}, "right of")
    assert left.holds.item() > 0.8 and right.holds.item() < 0.2
    span = slice(0, len(colors))  # the colour values come first in the attribute readout
    assert colors[int(evidence("color", {"shape": "square"}).subject[0, span].argmax())] == "blue"
    # "what is left of the blue square?": the red circle, not the white one above the square
    query = evidence("query", {}, {"color": "blue", "shape": "square"}, "left of")
    looked = query.looked_at[0, : len(scene.objects)]
    assert colors[int(query.related[0, span].argmax())] == "red" and looked.max() > 0.9


TINY_RUN = dict(model="tiny", speech=False, warmup_steps=1, checkpoint_every=4)


@pytest.fixture(scope="module")
def tiny_slots(shapes_train_dir, tmp_path_factory):
    """A tiny model with object slots, trained a few steps of the slots recipe."""
    from mmodal.training.config import TrainConfig
    from mmodal.training.loop import train

    out = tmp_path_factory.mktemp("tiny-slots")
    config = TrainConfig(out=str(out), data=str(shapes_train_dir), perception_steps=2, reasoner_steps=2, joint_steps=1)
    return train(replace(config, **TINY_RUN))


def _vqav2_files(folder) -> list[str]:
    """A VQAv2-format question set on disk (questions, annotations, images): the square's colour."""
    images = folder / "val2014"
    images.mkdir()
    questions, annotations = [], []
    for n, (name, colour) in enumerate(COLOURS.items(), start=1):
        _picture(colour).save(images / f"COCO_val2014_{n:012d}.jpg")
        questions.append({"question_id": n * 10, "image_id": n, "question": QUESTION})
        annotations.append(
            {"question_id": n * 10, "image_id": n, "multiple_choice_answer": name, "answers": [{"answer": name}]}
        )
    (folder / "q.json").write_text(json.dumps({"questions": questions}))
    (folder / "a.json").write_text(json.dumps({"annotations": annotations}))
    return ["--vqa-questions", str(folder / "q.json"), "--vqa-annotations", str(folder / "a.json")] + [
        "--vqa-images",
        str(images),
    ]


def test_answers_recipe_trains_answers_over_a_slots_model_and_keeps_the_rest(shapes_train_dir, tiny_slots, tmp_path):
    from safetensors.torch import load_file

    from mmodal.training.config import TrainConfig
    from mmodal.training.loop import train

    common = dict(data=str(shapes_train_dir), **TINY_RUN)
    slots = tiny_slots
    answers = train(
        TrainConfig(
            out=str(tmp_path / "answers"),
            recipe="answers",
            init_from=str(slots),
            answer_steps=3,
            answer_joint_steps=2,
            batch_size=8,
            **common,
        )
    )
    before, after = load_file(str(slots / "model.safetensors")), load_file(str(answers / "model.safetensors"))
    assert any(k.startswith("answerer.") for k in after)
    assert all(torch.equal(before[k], after[k]) for k in before)  # search is untouched
    model = MModalModel.from_pretrained(answers)
    picture = next((shapes_train_dir / "images").iterdir())
    with Image.open(picture) as image:
        answer = model.ask([image.convert("RGB")], ["what color is the circle?"], alternatives=2)[0]
    assert answer.attention is None and answer.looked_at
    assert all(0 <= o["weight"] <= 1 and 0 <= o["cx"] <= 1 for o in answer.looked_at)
    assert set(answer.to_dict()) == {"answer", "confidence", "alternatives", "looked_at"}


def test_answers_recipe_baselines_and_vqav2_questions_over_slots(shapes_train_dir, tiny_slots, tmp_path, caplog):
    """A dense fresh core answering blind, with VQAv2 questions from disk asked of their pictures' slots."""
    from safetensors.torch import load_file

    from mmodal.data.dataset import read_dataset
    from mmodal.data.vqa import read_vqa
    from mmodal.training.answer_recipe import answer_recipe_losses, build_answer_model
    from mmodal.training.config import TrainConfig
    from mmodal.training.slot_recipe import SlotTrainingData
    from mmodal.training.vqa_data import QuestionAnswerData

    vqa = _vqav2_files(tmp_path)
    out = tmp_path / "dense"
    argv = ["train", "--recipe", "answers", "--init-from", str(tiny_slots), "--data", str(shapes_train_dir)]
    argv += ["--model", "tiny", "--no-speech", "--answer-steps", "2", "--answer-joint-steps", "2"]
    argv += ["--batch-size", "8", "--device", "cpu"]
    assert main([*argv, "--model", "dense", "--out", str(tmp_path / "x")]) == 1
    assert "add --fresh-core" in caplog.text
    assert main([*argv, "--model", "dense", "--fresh-core", "--blind", *vqa, "--out", str(out)]) == 0
    model = MModalModel.from_pretrained(out / "model")
    assert model.config.text.n_routed_experts == 0 and model.answers_from_slots
    before, after = load_file(str(tiny_slots / "model.safetensors")), load_file(str(out / "model/model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("slot_encoder."))
    assert not torch.equal(
        before["language.embed_tokens.weight"], after["language.embed_tokens.weight"]
    )  # the core trained
    answer = model.ask([_picture(COLOURS["red"])], [QUESTION])[0]
    assert isinstance(answer.answer, str) and 0 <= answer.confidence <= 1

    # The VQAv2 questions join the answer loss of the second stage.
    config = TrainConfig(recipe="answers", init_from=str(tiny_slots), answer_steps=1, **TINY_RUN)
    torch.manual_seed(0)
    model = build_answer_model(config)
    data = SlotTrainingData(read_dataset(shapes_train_dir), model.input_size)
    asked = QuestionAnswerData(read_vqa(*vqa[1::2]), model.input_size)
    picks = np.arange(8)
    alone = answer_recipe_losses(model, data, picks, 1, config, np.random.default_rng(0))
    joined = answer_recipe_losses(model, data, picks, 1, config, np.random.default_rng(0), asked)
    assert torch.isfinite(joined["answer"]) and joined["answer"].item() != pytest.approx(alone["answer"].item())
    with pytest.raises(ValueError, match="goes with the slots recipe"):
        TrainConfig(recipe="answers", keep_slots=True)


def test_the_shipped_model_answers_from_slots_and_scores_alike_with_or_without_beams(model, dataset):
    """Beam search and the one-answer path score an answer the same way (sharpened, evidence-shifted words)."""
    images = dataset.images_by_id()
    records = [q for q in dataset.questions if q.type in ("query", "count", "color")][:12]
    pictures = [Image.open(dataset.image_path(images[q.image_id])).convert("RGB") for q in records]
    beams = model.ask(pictures, [q.question for q in records], alternatives=2)
    alone = model.ask(pictures, [q.question for q in records], alternatives=0)
    assert sum(a.answer == q.answer for a, q in zip(beams, records)) >= 10
    for b, a in zip(beams, alone):
        assert b.looked_at and b.attention is None
        if a.answer == b.answer:
            assert a.confidence == pytest.approx(b.confidence, rel=1e-3)
    assert sum(a.answer == b.answer for a, b in zip(alone, beams)) >= 10


def test_keep_slots_goes_on_from_the_slot_modules_of_init_from(tiny_slots, shapes_train_dir):
    from safetensors.torch import load_file

    from mmodal.training.config import TrainConfig
    from mmodal.training.slot_recipe import build_slot_model

    config = TrainConfig(init_from=str(tiny_slots), keep_slots=True, data=str(shapes_train_dir), **TINY_RUN)
    saved = load_file(str(tiny_slots / "model.safetensors"))
    slot_weights = [k for k in saved if k.startswith("slot_encoder.")]
    kept, fresh = (
        build_slot_model(config).state_dict(),
        build_slot_model(replace(config, keep_slots=False)).state_dict(),
    )
    assert all(torch.equal(kept[k], saved[k].float()) for k in slot_weights)
    assert not all(torch.equal(fresh[k], saved[k].float()) for k in slot_weights)


def test_training_questions_take_the_answers_in_turn_as_far_as_the_scenes_allow():
    from collections import Counter

    from mmodal.shapes.semantics import COUNT_WORDS
    from mmodal.shapes.world import count_question, sample_scene
    from mmodal.training.answer_recipe import draw_questions

    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng, "train") for _ in range(1400)]
    for scene in scenes[:200]:
        for k in range(len(COUNT_WORDS)):
            q = count_question(scene, k, rng, "train")
            assert q is None or (q.answer(scene) == COUNT_WORDS[k] and not q.held_out)
    assert all(count_question(s, len(s.objects), rng, "train") is not None for s in scenes[:200])
    answers = {}
    for start in range(0, len(scenes), 64):
        _, questions, said = draw_questions(scenes[start : start + 64], rng, start)
        for q, a in zip(questions, said):
            answers.setdefault(q.type, Counter())[a] += 1
    for qtype in ("exist", "relation", "size"):
        assert max(answers[qtype].values()) < 0.6 * sum(answers[qtype].values())
    counts = answers["count"]
    assert set(counts) == set(COUNT_WORDS) and counts["one"] < 0.45 * sum(counts.values())
