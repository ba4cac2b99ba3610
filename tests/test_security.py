"""Nothing mmodal opens is ever unpickled: a pickle planted in a model folder or an index folder is refused or
ignored, and never runs."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
import torch

from mmodal.indexes.collection import ImageIndex
from mmodal.indexes.errors import IndexCorruptedError
from mmodal.indexes.integrity import INDEX_FILE
from mmodal.indexes.manifest import MANIFEST_FILE, ModelIdentity
from mmodal.indexes.metadata import NewItem
from mmodal.model import WEIGHTS_FILE, MModalModel, resolve_model_path
from mmodal.training.checkpoint import OPTIMIZER_FILE, STATE_FILE, load_trainer_state

PICKLE_NAMES = ("pytorch_model.bin", "training_args.bin", "model.pkl", "optimizer.pt", "tokenizer.pickle")


class _Payload:
    """Unpickling this creates ``marker``: proof that something was unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def payload(tmp_path):
    marker = tmp_path / "pickle-ran"
    yield pickle.dumps(_Payload(marker)), marker
    assert not marker.exists(), "a planted pickle was unpickled"


def test_a_pickle_in_place_of_the_weights_is_refused_and_never_runs(tmp_path, payload):
    data, _ = payload
    folder = tmp_path / "model"
    shutil.copytree(resolve_model_path("shapes"), folder)
    (folder / WEIGHTS_FILE).write_bytes(data)
    with pytest.raises((ValueError, OSError)) as refused:
        MModalModel.from_pretrained(folder)
    assert WEIGHTS_FILE in str(refused.value) or "safetensors" in str(refused.value).lower()


def test_pickles_beside_the_weights_are_never_opened(tmp_path, payload):
    data, _ = payload
    folder = tmp_path / "model"
    shutil.copytree(resolve_model_path("shapes"), folder)
    for name in PICKLE_NAMES:
        (folder / name).write_bytes(data)
    model = MModalModel.from_pretrained(folder)
    assert model.config.name


def test_pickles_in_an_index_folder_are_refused_or_ignored(tmp_path, payload):
    data, _ = payload
    identity = ModelIdentity(name="test", weights_hash="ab" * 16, dim=8)
    vectors = np.eye(8, dtype=np.float32)
    with ImageIndex.open_for_writing(tmp_path, identity) as index:
        index.write_batch([NewItem(f"/p/{i}.png", f"h{i}", 1, 1, 4, 4, "PNG", v) for i, v in enumerate(vectors)])
        index.sync()
    for name in PICKLE_NAMES:
        (tmp_path / name).write_bytes(data)
    (tmp_path / INDEX_FILE).write_bytes(data)
    with pytest.raises(IndexCorruptedError, match=INDEX_FILE):
        ImageIndex.open(tmp_path)
    with ImageIndex.open_for_writing(tmp_path, identity) as index:  # rebuilt from the store, not read
        index.sync()
    with ImageIndex.open(tmp_path) as index:
        assert index.search(vectors[3], k=1)[0][0].path == "/p/3.png"
    (tmp_path / MANIFEST_FILE).write_bytes(data)
    with pytest.raises(IndexCorruptedError, match=f"{MANIFEST_FILE} is damaged"):
        ImageIndex.open(tmp_path)


def test_a_pickle_in_a_training_checkpoint_is_refused(tmp_path, payload):
    data, _ = payload
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))])
    for planted in (STATE_FILE, OPTIMIZER_FILE):
        (checkpoint / STATE_FILE).write_text("{}", encoding="utf-8")
        (checkpoint / OPTIMIZER_FILE).write_bytes(b"")
        (checkpoint / planted).write_bytes(data)
        with pytest.raises((ValueError, OSError, KeyError)):
            load_trainer_state(checkpoint, optimizer)
