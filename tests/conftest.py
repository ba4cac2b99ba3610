"""Shared fixtures: small generated Shapes datasets, made once per test session."""

from __future__ import annotations

import shutil

import pytest

from mmodal.shapes.generate import generate_shapes


@pytest.fixture(scope="session")
def shapes_test_dir(tmp_path_factory):
    """A small test split with spoken queries."""
    root = tmp_path_factory.mktemp("shapes") / "test"
    speech = shutil.which("espeak-ng") is not None
    generate_shapes(root, n=80, seed=11, split="test", with_speech=speech, n_queries=40, workers=2)
    return root


@pytest.fixture(scope="session")
def shapes_train_dir(tmp_path_factory):
    """A small train split (never shows the held-out pairs)."""
    root = tmp_path_factory.mktemp("shapes") / "train"
    generate_shapes(root, n=150, seed=5, split="train", workers=2)
    return root
