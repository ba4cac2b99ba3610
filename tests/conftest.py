"""Shared fixtures: small generated Shapes datasets, made once per test session."""

from __future__ import annotations

import os
import socket

import pytest
import torch

# Triton decides at decoration time whether its kernels run on the GPU or in its interpreter, so the
# interpreter is switched on before any module that defines kernels is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from mmodal.data.dataset import read_dataset
from mmodal.data.generate import generate_shapes
from mmodal.model import MModalModel
from mmodal.pipeline import index_collection
from mmodal.shapes.speech import can_speak


@pytest.fixture(scope="session")
def shapes_test_dir(tmp_path_factory):
    """A small test split with spoken queries."""
    root = tmp_path_factory.mktemp("shapes") / "test"
    speech = can_speak()
    generate_shapes(root, n=80, seed=11, split="test", with_speech=speech, n_queries=40, workers=2)
    return root


@pytest.fixture(scope="session")
def shapes_train_dir(tmp_path_factory):
    """A small train split (never shows the held-out pairs)."""
    root = tmp_path_factory.mktemp("shapes") / "train"
    generate_shapes(root, n=150, seed=5, split="train", workers=2)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def model():
    """The shipped model."""
    return MModalModel.from_pretrained("shapes")


@pytest.fixture(scope="session")
def dataset(shapes_test_dir):
    return read_dataset(shapes_test_dir)


@pytest.fixture(scope="session")
def served(tmp_path_factory, model, dataset):
    """The web app over the test split, indexed with the shipped model: (collection, url, client)."""
    from gradio_client import Client

    from mmodal.app.server import Collection, ServeOptions, launch

    index_dir = tmp_path_factory.mktemp("app") / "index"
    index_collection(model, [dataset.root / "images"], index_dir, workers=1, show_progress=False)
    collection = Collection(index_dir, model)
    app, url = launch(collection, ServeOptions(port=free_port()), block=False)
    yield collection, url, Client(url, verbose=False)
    app.close()
    collection.close()
