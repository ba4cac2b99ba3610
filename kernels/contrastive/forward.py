"""The contrastive loss's forward kernel: per item of one side, the logsumexp of its logits against all items of
the other side and against its positives only, and optionally its hardest negatives; with the tiles (logits,
positive pairs) and the launch settings that the backward kernel shares."""

from __future__ import annotations

import torch

from mmodal.kernels.dispatch import interpreting, tl, triton
from mmodal.kernels.launch import block_size, dot, on_device, program_block

MAX_HARD_NEGATIVES = 16  # the running top-k lives in registers, one slot per kept negative


@triton.jit
def raw_logits(a_ptr, b_ptr, a_strides, b_strides, a_index, b_index, n_a, n_b, dim, BLOCK_D: tl.constexpr):
    """(len(a_index), len(b_index)) dot products a_i · b_j in fp32, zero where either side is out of range."""
    a_valid, b_valid = a_index < n_a, b_index < n_b
    acc = tl.zeros((a_index.shape[0], b_index.shape[0]), dtype=tl.float32)
    for d_start in range(0, dim, BLOCK_D):
        d = d_start + tl.arange(0, BLOCK_D)
        d_valid = d < dim
        a = tl.load(
            a_ptr + a_index[:, None] * a_strides[0] + d[None, :] * a_strides[1],
            mask=a_valid[:, None] & d_valid[None, :],
            other=0.0,
        )
        b = tl.load(
            b_ptr + b_index[:, None] * b_strides[0] + d[None, :] * b_strides[1],
            mask=b_valid[:, None] & d_valid[None, :],
            other=0.0,
        )
        acc = dot(a, tl.trans(b), acc)
    return acc


@triton.jit
def positive_pairs(positives_ptr, pos_strides, a_index, b_index, n_a, n_b):
    """Which (a_i, b_j) pairs in range are positive: those of the caller's bool matrix, or without one the
    diagonal."""
    valid = (a_index < n_a)[:, None] & (b_index < n_b)[None, :]
    if positives_ptr is None:
        positive = a_index[:, None] == b_index[None, :]
    else:
        # One byte per entry, read straight from the caller's bool matrix (or its transpose, by strides).
        offsets = a_index.to(tl.int64)[:, None] * pos_strides[0] + b_index.to(tl.int64)[None, :] * pos_strides[1]
        positive = tl.load(positives_ptr + offsets, mask=valid, other=0) != 0
    return positive & valid


@triton.jit
def _online_logsumexp(running_max, running_sum, tile):
    """Folds a tile (entries to leave out at -inf) into a per-row logsumexp kept as max and scaled sum."""
    new_max = tl.maximum(running_max, tl.max(tile, axis=1))
    # A row that has seen only -inf so far keeps sum 0; shifting by 0 instead of -inf avoids inf - inf.
    shift = tl.where(new_max == float("-inf"), 0.0, new_max)
    running_sum = running_sum * tl.exp(running_max - shift) + tl.sum(tl.exp(tile - shift[:, None]), axis=1)
    return new_max, running_sum


@triton.jit
def _nce_stats_kernel(
    a_ptr, b_ptr, scale_ptr, positives_ptr, a_strides, b_strides, pos_strides,
    lse_all_ptr, lse_positive_ptr, hard_values_ptr, hard_index_ptr,
    n_a, n_b, dim,
    HARD_K: tl.constexpr, HARD_K_PAD: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Per item of ``a``: logsumexp of its logits against all of ``b`` and against its positives only,
    and (HARD_K > 0) its HARD_K highest-logit non-positive items of ``b``."""
    a_index, a_valid = program_block(0, n_a, BLOCK_A)
    scale = tl.load(scale_ptr)
    max_all = tl.full((BLOCK_A,), float("-inf"), dtype=tl.float32)
    sum_all = tl.zeros((BLOCK_A,), dtype=tl.float32)
    max_positive = tl.full((BLOCK_A,), float("-inf"), dtype=tl.float32)
    sum_positive = tl.zeros((BLOCK_A,), dtype=tl.float32)
    # Padding slots hold +inf so that the slot to replace, the smallest, is always a real one.
    slot = tl.arange(0, HARD_K_PAD)
    hard_values = tl.where(slot[None, :] < HARD_K, float("-inf"), float("inf")) + tl.zeros(
        (BLOCK_A, HARD_K_PAD), dtype=tl.float32
    )
    hard_index = tl.full((BLOCK_A, HARD_K_PAD), -1, dtype=tl.int32)
    for b_start in range(0, n_b, BLOCK_B):
        b_local = tl.arange(0, BLOCK_B)
        b_index = b_start + b_local
        raw = raw_logits(a_ptr, b_ptr, a_strides, b_strides, a_index, b_index, n_a, n_b, dim, BLOCK_D)
        logits = tl.where((b_index < n_b)[None, :], raw * scale, float("-inf"))
        positive = positive_pairs(positives_ptr, pos_strides, a_index, b_index, n_a, n_b)
        max_all, sum_all = _online_logsumexp(max_all, sum_all, logits)
        max_positive, sum_positive = _online_logsumexp(
            max_positive, sum_positive, tl.where(positive, logits, float("-inf"))
        )
        if HARD_K > 0:
            # Take the tile's best negatives one at a time, each replacing the weakest kept one if better.
            candidates = tl.where(positive, float("-inf"), logits)
            for _ in tl.static_range(HARD_K):
                best, best_local = tl.max(candidates, axis=1, return_indices=True)
                weakest, weakest_slot = tl.min(hard_values, axis=1, return_indices=True)
                replace = (slot[None, :] == weakest_slot[:, None]) & (best > weakest)[:, None]
                hard_values = tl.where(replace, best[:, None], hard_values)
                hard_index = tl.where(replace, (b_start + best_local)[:, None], hard_index)
                candidates = tl.where(b_local[None, :] == best_local[:, None], float("-inf"), candidates)
    # An empty sum comes with max -inf, so log(1) leaves the logsumexp at -inf without taking log(0).
    tl.store(lse_all_ptr + a_index, max_all + tl.log(tl.where(sum_all > 0, sum_all, 1.0)), mask=a_valid)
    lse_positive = max_positive + tl.log(tl.where(sum_positive > 0, sum_positive, 1.0))
    tl.store(lse_positive_ptr + a_index, lse_positive, mask=a_valid)
    if HARD_K > 0:
        offsets = a_index[:, None] * HARD_K + slot[None, :]
        keep = a_valid[:, None] & (slot[None, :] < HARD_K)
        tl.store(hard_values_ptr + offsets, hard_values, mask=keep)
        tl.store(hard_index_ptr + offsets, hard_index, mask=keep)


def block_sizes(dim: int) -> dict[str, int]:
    if interpreting():
        # The interpreter pays per operation, not per element, and tests use tiny shapes: small blocks still
        # run every multi-block and masked-edge path.
        return {"BLOCK_A": 16, "BLOCK_B": 16, "BLOCK_D": 16, "BLOCK_OUT": 16}
    return {"BLOCK_A": 64, "BLOCK_B": 64, "BLOCK_D": block_size(dim, 64), "BLOCK_OUT": block_size(dim, 128)}


def positive_strides(positives: torch.Tensor | None, transpose: bool) -> tuple[int, int]:
    """Strides that read ``positives`` (R, C) from the rows' side, or from the columns' with ``transpose``."""
    if positives is None:
        return 0, 0
    return positives.stride()[:: -1 if transpose else 1]


def side_stats(a, b, scale, positives, transpose: bool, hard_k: int):
    """Logsumexps (all, positive) for each item of ``a`` against ``b``, and its top ``hard_k`` negatives."""
    n_a, n_b, dim = a.shape[0], b.shape[0], a.shape[1]
    lse_all = torch.full((n_a,), float("-inf"), device=a.device, dtype=torch.float32)
    lse_positive = torch.full_like(lse_all, float("-inf"))
    hard_values = torch.empty((n_a, hard_k), device=a.device, dtype=torch.float32)
    hard_index = torch.empty((n_a, hard_k), device=a.device, dtype=torch.int32)
    if n_a == 0 or n_b == 0:
        hard_values.fill_(float("-inf"))
        hard_index.fill_(-1)
        return lse_all, lse_positive, hard_values, hard_index
    blocks = block_sizes(dim)
    with on_device(a):
        _nce_stats_kernel[(triton.cdiv(n_a, blocks["BLOCK_A"]),)](
            a, b, scale, positives, a.stride(), b.stride(), positive_strides(positives, transpose),
            lse_all, lse_positive, hard_values, hard_index,
            n_a, n_b, dim,
            HARD_K=hard_k, HARD_K_PAD=triton.next_power_of_2(max(hard_k, 1)),
            BLOCK_A=blocks["BLOCK_A"], BLOCK_B=blocks["BLOCK_B"], BLOCK_D=blocks["BLOCK_D"], num_warps=4,
        )  # fmt: skip
    return lse_all, lse_positive, hard_values, hard_index
