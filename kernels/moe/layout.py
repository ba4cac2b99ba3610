"""Where each (token, choice) sits in the buffer of rows grouped by expert, and the checks that the pieces
working on that buffer share. The layout is index bookkeeping in torch; the kernels only read it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmodal.kernels.launch import KERNEL_DTYPES, check_one_device

ROW_TILE = 16  # rows per tile of the grouped products; tl.dot needs at least 16
TOKEN_BLOCK = 16  # tokens per program of the gating and gathering kernels


@dataclass(frozen=True)
class ExpertLayout:
    """Where each (token, choice) sits in the buffer of rows grouped by expert.

    Rows of expert ``e`` are ``expert_rows[e]:expert_rows[e + 1]``, a whole number of ``row_tile`` tiles; within
    an expert the rows follow token order; rows past an expert's tokens are padding.
    """

    slot_rows: torch.Tensor  # (N, k) int32: the row of each (token, choice), -1 for tokens not dispatched
    row_slots: torch.Tensor  # (R,) int32: token * k + choice for each row, -1 for padding rows
    tile_experts: torch.Tensor  # (R // row_tile,) int32: the expert of each row tile
    expert_rows: torch.Tensor  # (E + 1,) int32: each expert's first row, then the total
    tokens_per_expert: torch.Tensor  # (E,) int64: dispatched (token, choice) pairs per expert
    row_tile: int

    @property
    def n_rows(self) -> int:
        return self.row_slots.shape[0]

    @property
    def top_k(self) -> int:
        return self.slot_rows.shape[1]

    @property
    def n_experts(self) -> int:
        return self.tokens_per_expert.shape[0]


@torch.no_grad()
def expert_layout(
    experts: torch.Tensor, keep: torch.Tensor | None, n_experts: int, row_tile: int = ROW_TILE
) -> ExpertLayout:
    """Groups the (token, choice) pairs of ``experts`` (N, k) by expert; tokens with ``keep`` False are left out."""
    if experts.dim() != 2 or experts.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"experts must be an (N, k) integer tensor, got {tuple(experts.shape)} {experts.dtype}")
    n_tokens, top_k = experts.shape
    if keep is not None and (keep.shape != (n_tokens,) or keep.dtype != torch.bool):
        raise ValueError(f"keep must be a ({n_tokens},) bool tensor, got {tuple(keep.shape)} {keep.dtype}")
    if row_tile < 16 or row_tile & (row_tile - 1):
        raise ValueError(f"row_tile must be a power of two of at least 16, got {row_tile}")
    device = experts.device
    n_slots = n_tokens * top_k
    key = experts.reshape(-1).long()
    if keep is not None:
        # Dropped pairs go to a sentinel expert past the last, which sorts them to the end and owns no rows.
        key = torch.where(keep.to(device)[:, None].expand(n_tokens, top_k).reshape(-1), key, n_experts)
    counts = torch.bincount(key, minlength=n_experts + 1)  # (E + 1,), the sentinel's count last
    padded = (counts + row_tile - 1) // row_tile * row_tile
    padded[n_experts] = 0
    first_sorted = torch.cumsum(counts, 0) - counts
    expert_rows = torch.cat([padded.new_zeros(1), torch.cumsum(padded, 0)])  # (E + 2,)
    n_rows = int(expert_rows[n_experts])
    order = torch.argsort(key, stable=True)  # pairs grouped by expert, token order within each
    sorted_key = key[order]
    rank = torch.arange(n_slots, device=device) - first_sorted[sorted_key]
    dispatched = sorted_key < n_experts
    rows = torch.where(dispatched, expert_rows[sorted_key] + rank, -1)
    slot_rows = torch.full((n_slots,), -1, dtype=torch.int32, device=device)
    slot_rows[order] = rows.to(torch.int32)
    # Dropped pairs write to one extra row, cut off below.
    row_slots = torch.full((n_rows + 1,), -1, dtype=torch.int32, device=device)
    row_slots[torch.where(dispatched, rows, n_rows)] = torch.where(dispatched, order, -1).to(torch.int32)
    tiles_per_expert = padded[:n_experts] // row_tile
    tile_experts = torch.repeat_interleave(torch.arange(n_experts, device=device, dtype=torch.int32), tiles_per_expert)
    return ExpertLayout(
        slot_rows=slot_rows.reshape(n_tokens, top_k),
        row_slots=row_slots[:n_rows],
        tile_experts=tile_experts,
        expert_rows=expert_rows[: n_experts + 1].to(torch.int32),
        tokens_per_expert=counts[:n_experts],
        row_tile=row_tile,
    )


def check_float(name: str, t: torch.Tensor, dim: int) -> None:
    if t.dim() != dim:
        raise ValueError(f"{name} must have {dim} dimensions, got shape {tuple(t.shape)}")
    if t.dtype not in KERNEL_DTYPES:
        raise ValueError(f"{name} must be fp32, fp16 or bf16, got {t.dtype}")


def check_on_layout_device(layout: ExpertLayout, *tensors: torch.Tensor) -> None:
    check_one_device("inputs and layout", *tensors, layout.slot_rows)
