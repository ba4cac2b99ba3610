"""Each model and each index layout keeps its Protocol (``mmodal.retrieval.Model``, ``mmodal.indexes.protocol.Index``):
what indexing, search, questions and the web app call of it exists and behaves alike."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from mmodal.answering import Answer
from mmodal.data.sample_photos import sample_photo_paths
from mmodal.encoders.pixels import letterboxed_batch
from mmodal.indexes.folders import open_index
from mmodal.indexes.manifest import ModelIdentity
from mmodal.indexes.metadata import NewItem
from mmodal.indexes.protocol import Index
from mmodal.loading import load_model
from mmodal.retrieval import Model, UnsupportedQueryError
from tests.tiny_models import tiny_dual_encoder, tiny_swin_classifier

MODELS = ["shapes", "clip", "swin", pytest.param("photos", marks=pytest.mark.slow)]


@pytest.fixture(scope="module")
def implementations(tmp_path_factory, model):
    home = tmp_path_factory.mktemp("protocol-models")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MMODAL_HOME", str(home / "cache"))
        tiny_dual_encoder(home / "clip", "clip")
        tiny_swin_classifier(home / "swin")
        made = {"shapes": model, "clip": f"clip:{home / 'clip'}", "swin": f"swin:{home / 'swin'}", "photos": "photos"}
        yield lambda name: made[name] if name == "shapes" else load_model(made[name])


@pytest.mark.parametrize("name", MODELS)
def test_every_model_keeps_the_model_protocol(implementations, name):
    model = implementations(name)
    assert isinstance(model, Model)
    pictures = [Image.open(path).convert("RGB") for path in sample_photo_paths()[:2]]
    texts = model.encode_text(["a red circle", "a photo of a dog"])
    images = model.encode_image(pictures)
    assert texts.shape == images.shape == (2, model.embed_dim)
    assert torch.allclose(texts.norm(dim=-1), torch.ones(2), atol=1e-4)
    assert torch.allclose(images.norm(dim=-1), torch.ones(2), atol=1e-4)
    # Indexing's path (letterboxed uint8 pixels) embeds a picture as encode_image does.
    pixels, frames = letterboxed_batch(pictures, model.input_size)
    vectors, slots = model.encode_pixels(torch.from_numpy(pixels), torch.from_numpy(frames))
    assert vectors.dtype == np.float32 and vectors.shape == (2, model.embed_dim)
    assert np.allclose(vectors, images.numpy(), atol=2e-3)
    identity = model.identity
    assert (identity.dim, identity.slot_dim) == (model.embed_dim, model.slot_dim) and identity.name == model.model_name
    assert isinstance(model.unknown_words("a red zorbly"), list)
    scores = np.array([0.5, 0.2], np.float32)
    assert model.rescore_text_hits(scores, vectors).shape == (2,)
    if model.has_slots:
        assert slots.shape[0] == 2 and slots.shape[2] == model.slot_dim
        embedded, parses = model.encode_and_read(["a red circle"])
        assert torch.allclose(embedded[0], texts[0], atol=1e-4)
        decision = model.decide(parses[0], torch.from_numpy(slots))
        assert decision.probability.shape == (2,) and ((0 <= decision.probability) & (decision.probability <= 1)).all()
        assert model.slot_boxes(torch.from_numpy(slots)).shape == (*slots.shape[:2], 3)
    else:
        assert slots is None
        for refused in (lambda: model.decide(None, torch.zeros(1, 1, 1)), lambda: model.slot_boxes(torch.zeros(1))):
            with pytest.raises(UnsupportedQueryError, match="slots"):
                refused()
    clip = (np.zeros(16_000, np.float32), 16_000)
    if model.transcribes:
        assert model.encode_audio([clip]).shape == (1, model.embed_dim) and len(model.transcribe([clip])) == 1
    else:
        with pytest.raises(UnsupportedQueryError, match="voice"):
            model.encode_audio([clip])
    try:
        answers = model.ask(pictures[:1], ["what is this?"])
    except UnsupportedQueryError as refusal:
        assert "does not answer questions" in str(refusal)
    else:
        assert len(answers) == 1 and isinstance(answers[0], Answer) and 0 <= answers[0].confidence <= 1


DIM, SLOT_DIM = 8, 3
IDENTITY = ModelIdentity(name="protocol", weights_hash="ef" * 16, dim=DIM, slot_dim=SLOT_DIM)


def _items(n: int) -> list[NewItem]:
    rng = np.random.default_rng(11)
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [
        NewItem(f"/pictures/{i:03d}.png", f"{i:016x}", 10 + i, 1_000 + i, 32, 24, "PNG", v, np.full((2, SLOT_DIM), i))
        for i, v in enumerate(vectors)
    ]


@pytest.mark.parametrize("shards", [None, 3], ids=["one-folder", "sharded"])
def test_every_index_layout_keeps_the_index_protocol(tmp_path, shards):
    items = _items(40)
    copy = replace(items[0], path="/pictures/copy.png", content_hash="f" * 16)
    with open_index(tmp_path / "index", "w", IDENTITY, shards=shards, factory="Flat") as index:
        assert isinstance(index, Index)
        index.add_roots(["/pictures"])
        ids = index.write_batch(items + [copy], skipped=[("/pictures/broken.png", "not an image", 5, 1)])
        assert len(ids) == len(items) + 1 and index.item_for_hash(items[3].content_hash) == ids[3]
        assert index.file_state(items[3].path) == (items[3].size, items[3].mtime_ns)
        assert index.sync() == (len(ids), 0)
    with open_index(tmp_path / "index", model=IDENTITY) as index:
        assert isinstance(index, Index) and index.count() == index.searchable == len(ids)
        hits = index.search(np.stack([items[5].vector, items[9].vector]), 3)
        assert [row[0].item.id for row in hits] == [ids[5], ids[9]] and hits[0][0].score == pytest.approx(1.0)
        assert index.path_of(ids[7]) == items[7].path
        assert np.allclose(index.slots_for([ids[7]])[ids[7]], 7)
        assert np.allclose(index.vectors_for([ids[8]])[ids[8]], items[8].vector)
        assert index.roots() == ["/pictures"] and index.skipped() == [("/pictures/broken.png", "not an image")]
        groups = index.near_duplicates(0.999)
        assert [[p for info in group for p in info.paths] for group in groups] == [[items[0].path, copy.path]]
        stats = index.stats()
        assert stats["images"] == len(ids) and stats["model"] == "protocol" and stats["skipped"] == 1
    with open_index(tmp_path / "index", "w", IDENTITY) as index:
        assert index.remove_paths([items[1].path]) == 1 and index.sync() == (0, 1)
