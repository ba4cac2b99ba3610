"""Packaging: every folder installs inside mmodal, the console script runs, and no generic top-level name is ours."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

import mmodal

REPOSITORY = Path(__file__).resolve().parents[1]
FOLDERS = {"encoders": "mmodal.encoders", "fusion": "mmodal.fusion", "indexes": "mmodal.indexes"}
FOLDERS |= {"kernels": "mmodal.kernels", "app": "mmodal.app"}


@pytest.mark.parametrize("package", ["mmodal", *FOLDERS.values()])
def test_packages_import_under_mmodal(package):
    module = importlib.import_module(package)
    assert module.__doc__
    folder = package.split(".")[-1]
    assert Path(module.__file__).parent == REPOSITORY / folder or folder == "mmodal"


def test_every_folder_with_an_init_is_an_installed_package():
    settings = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(settings["packages"])
    found = set()
    for init in REPOSITORY.glob("**/__init__.py"):
        parts = init.parent.relative_to(REPOSITORY).parts
        if parts[0] in FOLDERS:
            found.add(".".join((FOLDERS[parts[0]], *parts[1:])))
        elif parts[0] == "mmodal":
            found.add(".".join(parts))
    assert found == declared
    assert settings["package-dir"] == {installed: folder for folder, installed in FOLDERS.items()}


def test_no_generic_top_level_name_is_installed(tmp_path):
    # From a folder outside the repository (where the repository's own folders are not on the path), the design's
    # folders are found only inside mmodal, and transformers does not take anything of ours for Hugging Face's
    # `kernels` package.
    code = (
        "import importlib.util as u, transformers.utils as t; "
        f"print([n for n in {sorted(FOLDERS)!r} if u.find_spec(n) is not None], t.is_kernels_available(), "
        "u.find_spec('mmodal.kernels') is not None)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[] False True"


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
TORCH_FREE = ["mmodal.indexes.atomic", "mmodal.indexes.collection", "mmodal.indexes.manifest"]
TORCH_FREE += ["mmodal.indexes.metadata", "mmodal.indexes.vectors", "mmodal.indexes.folders", "mmodal.indexes.protocol"]
TORCH_FREE += ["mmodal.indexes.shards", "mmodal.indexes.hits", "mmodal.indexes.integrity"]
TORCH_FREE += ["mmodal.indexes.errors", "mmodal.data.decode", "mmodal.encoders.pixels"]
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
