"""What the ops' launchers and kernels share: the dtypes the kernels take, argument checks, block sizes and the
device to launch on; and, inside kernels, ``tl.dot`` at the precision the operands call for and a program's block
of indices."""

from __future__ import annotations

import contextlib

import torch

from mmodal.kernels.dispatch import tl, triton

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_one_device(what: str, *tensors: torch.Tensor | None) -> None:
    """Raises ValueError naming ``what`` unless the tensors (None entries aside) share a device."""
    devices = {t.device for t in tensors if t is not None}
    if len(devices) != 1:
        raise ValueError(f"{what} must be on one device, got {sorted(map(str, devices))}")


def check_kernel_dtype(what: str, *tensors: torch.Tensor) -> None:
    """Raises ValueError naming ``what`` unless the tensors share one dtype that the kernels take."""
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) != 1 or tensors[0].dtype not in KERNEL_DTYPES:
        raise ValueError(f"{what} must share one of fp32, fp16, bf16; got {sorted(map(str, dtypes))}")


def block_size(n: int, most: int, least: int = 16) -> int:
    """The power of two that covers ``n``, kept within [least, most]; tl.dot wants every side at least 16."""
    return max(least, min(most, triton.next_power_of_2(max(n, 1))))


def on_device(tensor: torch.Tensor):
    """Context in which a launch goes to the tensor's GPU: Triton launches on the current device."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


@triton.jit
def dot(a, b, acc=None):
    """``tl.dot`` that multiplies fp32 operands in full precision, so that a kernel on fp32 inputs stays within
    float32 rounding of torch's matmul; 16-bit operands take Triton's default."""
    if a.dtype == tl.float32:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def program_block(AXIS: tl.constexpr, n, BLOCK: tl.constexpr):
    """This program's block of indices along the grid's ``AXIS``, and which of them are below ``n``."""
    offsets = tl.program_id(AXIS) * BLOCK + tl.arange(0, BLOCK)
    return offsets, offsets < n
