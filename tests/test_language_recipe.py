"""The language recipe: a fresh tokenizer, core, readers and answers over a slot model's frozen perception, learning
to read texts as people word them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mmodal.config import tiny_config
from mmodal.data.dataset import read_dataset
from mmodal.encoders.tokenizer import build_tokenizer
from mmodal.model import MModalModel
from mmodal.training.config import TrainConfig
from mmodal.training.loop import train
from mmodal.training.reading import LANGUAGE_MODULES, ReadingStage, language_over
from mmodal.training.slot_batches import SlotTrainingData
from mmodal.training.temperature import Temperature


@pytest.fixture(scope="module")
def slot_model_dir(tmp_path_factory):
    torch.manual_seed(0)
    texts = [f"a {c} {s}" for c in ("red", "blue") for s in ("circle", "square")] * 20
    model = MModalModel(tiny_config(), build_tokenizer(texts, vocab_size=300)).eval()
    folder = tmp_path_factory.mktemp("slots") / "tiny"
    model.save_pretrained(folder)
    return folder


def _config(tmp_path, data, init_from, **overrides) -> TrainConfig:
    settings = dict(
        recipe="language",
        out=str(tmp_path / "run"),
        data=str(data),
        init_from=str(init_from),
        reading_steps=100,
        joint_steps=2,
        batch_size=16,
        parse_texts=16,
        warmup_steps=2,
        checkpoint_every=20,
        log_every=10,
        lr=3e-3,
    )
    return TrainConfig(**{**settings, **overrides})


@pytest.mark.slow
def test_language_recipe_learns_to_read_worded_texts(slot_model_dir, shapes_train_dir, tmp_path):
    config = _config(tmp_path, shapes_train_dir, slot_model_dir)
    stage = ReadingStage(seen=False, modules=LANGUAGE_MODULES)
    torch.manual_seed(0)
    fresh = language_over(config)
    assert {"big", "tiny", "beneath", "colour", "hexagonal"} <= set(fresh.config.text.known_words)
    assert fresh.unknown_words("show me a big blue square to the left of a tiny star-shaped thing") == []
    data = SlotTrainingData(read_dataset(shapes_train_dir), fresh.input_size)

    def parse_loss(model) -> float:
        with torch.no_grad():
            rng = np.random.default_rng(7)
            losses = stage.losses(model, data, 16, np.zeros(0, np.int64), 0, config, rng, Temperature())
            return float(losses["parse"])

    before = parse_loss(fresh.train())
    assert train(config, for_steps=20) is None  # stops at a checkpoint
    final = train(config, resume=True)
    trained = MModalModel.from_pretrained(final)
    assert parse_loss(trained.train()) < 0.85 * before
    # Perception is the init model's, untouched; the core is new.
    init, now = load_file(str(slot_model_dir / "model.safetensors")), load_file(str(final / "model.safetensors"))
    for name in [k for k in init if k.startswith("slot_encoder.")][:5]:
        assert torch.allclose(init[name].float(), now[name].float(), atol=1e-3), name
