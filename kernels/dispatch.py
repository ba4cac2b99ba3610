"""Which implementation of a kernel op runs: Triton on CUDA tensors, the plain-torch reference elsewhere.

``MMODAL_KERNELS`` chooses: ``auto`` (the default) as above; ``torch`` the reference everywhere; ``triton`` the
Triton kernels everywhere, which on CPU tensors needs ``TRITON_INTERPRET=1`` (Triton's interpreter, for tests).

The kernel modules take ``triton`` and ``tl`` from here. Triton ships for Linux x86-64 only; elsewhere they are
stand-ins that let every kernel be defined, so that the modules import and the references run, and launching a
kernel raises :class:`KernelUnavailableError`.
"""

from __future__ import annotations

import functools
import os

import torch

CHOICES = ("auto", "torch", "triton")


class KernelUnavailableError(RuntimeError):
    """MMODAL_KERNELS=triton was asked for where Triton cannot run."""


class _UnlaunchableKernel:
    """A ``@triton.jit`` function on a machine without Triton."""

    def __init__(self, fn):
        functools.update_wrapper(self, fn)

    def __getitem__(self, grid):
        raise KernelUnavailableError(f"{self.__name__} is a Triton kernel, but Triton is not installed")


class _TritonStandIn:
    """What defining the kernels needs of ``triton`` and ``triton.language``."""

    jit = staticmethod(_UnlaunchableKernel)

    @staticmethod
    def constexpr(value):
        return value


try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:
    triton = tl = _TritonStandIn()
    HAS_TRITON = False


def choice() -> str:
    value = os.environ.get("MMODAL_KERNELS", "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"MMODAL_KERNELS={value!r}: use one of {', '.join(CHOICES)}")
    return value


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def use_triton(*tensors: torch.Tensor | None) -> bool:
    """True when the op should run its Triton kernel on these tensors (None entries are ignored)."""
    wanted = choice()
    if wanted == "torch":
        return False
    on_cuda = all(t.is_cuda for t in tensors if t is not None)
    if wanted == "auto":
        return HAS_TRITON and on_cuda
    if not HAS_TRITON:
        raise KernelUnavailableError("MMODAL_KERNELS=triton, but Triton is not installed: pip install triton")
    if not on_cuda and not interpreting():
        raise KernelUnavailableError(
            "MMODAL_KERNELS=triton on CPU tensors needs Triton's interpreter: set TRITON_INTERPRET=1 before starting"
        )
    return True
