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
