"""Packaging: the six top-level packages install, the console script runs, and our `kernels` stays ours."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys

import pytest

import mmodal


@pytest.mark.parametrize("package", ["mmodal", "encoders", "fusion", "kernels", "app", "indexes"])
def test_top_level_packages_import(package):
    module = importlib.import_module(package)
    assert module.__doc__


def test_transformers_does_not_mistake_our_kernels_package_for_hugging_face_kernels():
    # A fresh interpreter, so that no earlier import has cached the answer.
    code = "import kernels, transformers.utils as u; print(u.is_kernels_available())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_console_script_reports_its_version():
    script = shutil.which("mmodal", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert script is not None, "the mmodal console script is not installed beside this interpreter"
    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout.strip() == f"mmodal {mmodal.__version__}"
    assert mmodal.__version__ != "0.0.0+unknown"


# The index layer and the decoding workers must not need torch: the workers start in a fresh interpreter each,
# and `indexes` is meant to serve machines that only search. A fresh interpreter in which importing torch
# (or the libraries that pull it in) fails proves it, where a grep for "import torch" would miss a
# transitive import.
TORCH_FREE = ["indexes.atomic", "indexes.collection", "indexes.manifest", "indexes.metadata", "indexes.vectors"]
TORCH_FREE += ["indexes.folders", "indexes.protocol", "indexes.shards", "indexes.hits", "indexes.integrity"]
TORCH_FREE += ["indexes.errors", "mmodal.data.decode", "encoders.pixels"]
TORCH_LIBRARIES = "torch,transformers,timm,torchaudio,torchvision"
BLOCKING = """
import importlib, importlib.abc, sys
blocked = sys.argv[1].split(",")
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in blocked):
            raise ImportError(f"{name} is blocked: this module must not need it")
sys.meta_path.insert(0, Blocked())
for module in sys.argv[2:]:
    importlib.import_module(module)
print("imported", len(sys.argv) - 2)
"""


def _import_blocking(blocked: str, modules: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCKING, blocked, *modules], capture_output=True, text=True, timeout=120
    )


def test_the_index_layer_and_the_decoders_import_with_torch_blocked():
    result = _import_blocking(TORCH_LIBRARIES, TORCH_FREE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"imported {len(TORCH_FREE)}"
    # The blocker does block: a module that needs torch fails under it.
    failing = _import_blocking(TORCH_LIBRARIES, ["mmodal.model"])
    assert failing.returncode != 0 and "blocked" in failing.stderr


def test_the_shapes_world_does_not_need_the_dataset_layer():
    names = ("scene", "semantics", "world", "question_sampling", "text_edits", "wording", "render", "speech")
    modules = [f"mmodal.shapes.{name}" for name in names]
    result = _import_blocking("mmodal.data", modules)
    assert result.returncode == 0, result.stderr
    assert _import_blocking("mmodal.data", ["mmodal.data.generate"]).returncode != 0
