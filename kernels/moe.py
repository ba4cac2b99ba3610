"""The routed experts of a sparse mixture-of-experts layer, as four Triton op pieces and their composition.

For tokens ``x`` (N, H), router logits ``z`` (N, E) and stacked SwiGLU expert weights ``w_gate_up`` (E, H, 2F) and
``w_down`` (E, F, H), each token goes to its ``k`` highest-scoring experts and gets back

    out[t] = sum_j weight[t, j] * down_e(silu(gate_e(x[t])) * up_e(x[t])),   e = expert[t, j],

where ``weight[t]`` is the softmax over E, cut to the top k and renormalised (the softmax over the k selected
logits). Tokens with ``keep[t]`` False are not dispatched and get zeros.

The pieces, each with a Triton forward and backward:

* :func:`topk_gating`: logits (N, E) → weights (N, k), expert ids (N, k); the backward gives d logits.
* :func:`permute_tokens`: copies each (token, choice) into a row of a buffer grouped by expert, every expert's
  rows padded to a multiple of the row tile, so that each row tile belongs to one expert (the layout itself,
  :func:`expert_layout`, is index bookkeeping in torch). The backward sums each token's rows.
* :func:`grouped_matmul`: ``Y[rows of e] = X[rows of e] @ W[e]`` for W (E, K, N); the backward runs the same
  kernel against ``W[e]^T`` for dX and a grouped kernel for ``dW[e] = X_e^T @ dY_e``.
* :func:`unpermute_tokens`: ``out[t] = sum_j weight[t, j] * Y[row of (t, j)]``, gathered per token, so no atomics;
  the backward gives dY and d weights.

:func:`moe_experts` runs them in order (SiLU(gate) * up stays in torch between the two products). Each piece has a
plain-torch reference, which is the CPU path and the kernels' test oracle.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels.dispatch import HAS_TRITON, use_triton

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _topk_gating_forward_kernel(
        logits_ptr,
        weights_ptr,
        experts_ptr,
        n_tokens,
        n_experts,
        stride_lt,
        stride_le,
        stride_wt,
        stride_et,
        TOP_K: tl.constexpr,
        BLOCK_T: tl.constexpr,
        BLOCK_E: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        tokens = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
        cols = tl.arange(0, BLOCK_E)
        slots = tl.arange(0, BLOCK_K)
        token_ok, expert_ok = tokens < n_tokens, cols < n_experts
        logits = tl.load(
            logits_ptr + tokens[:, None] * stride_lt + cols[None, :] * stride_le,
            mask=token_ok[:, None] & expert_ok[None, :],
            other=0.0,
        ).to(tl.float32)
        # Missing experts never win; rows past the last token stay finite so that their (unstored) weights are too.
        logits = tl.where(expert_ok[None, :], logits, float("-inf"))
        chosen = tl.full((BLOCK_T, BLOCK_K), float("-inf"), dtype=tl.float32)
        chosen_ids = tl.zeros((BLOCK_T, BLOCK_K), dtype=tl.int32)
        # Softmax is monotonic, so the top k of the logits are the top k of the probabilities, and the k
        # renormalised probabilities are the softmax over the k chosen logits.
        for j in tl.static_range(TOP_K):
            best = tl.argmax(logits, axis=1)
            best_logit = tl.max(logits, axis=1)
            chosen = tl.where(slots[None, :] == j, best_logit[:, None], chosen)
            chosen_ids = tl.where(slots[None, :] == j, best[:, None], chosen_ids)
            logits = tl.where(cols[None, :] == best[:, None], float("-inf"), logits)
        # Slot 0 holds the largest logit, so no exponent is positive.
        top = tl.max(chosen, axis=1)
        scores = tl.exp(chosen - top[:, None])
        weights = scores / tl.sum(scores, axis=1)[:, None]
        ok = token_ok[:, None] & (slots < TOP_K)[None, :]
        tl.store(weights_ptr + tokens[:, None] * stride_wt + slots[None, :], weights, mask=ok)
        tl.store(experts_ptr + tokens[:, None] * stride_et + slots[None, :], chosen_ids.to(tl.int64), mask=ok)

    @triton.jit
    def _topk_gating_backward_kernel(
        weights_ptr,
        grad_weights_ptr,
        experts_ptr,
        grad_logits_ptr,
        n_tokens,
        n_experts,
        stride_wt,
        stride_gt,
        stride_gk,
        stride_et,
        stride_dt,
        TOP_K: tl.constexpr,
        BLOCK_T: tl.constexpr,
        BLOCK_E: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        tokens = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
        cols = tl.arange(0, BLOCK_E)
        slots = tl.arange(0, BLOCK_K)
        token_ok = tokens < n_tokens
        ok = token_ok[:, None] & (slots < TOP_K)[None, :]
        weights = tl.load(weights_ptr + tokens[:, None] * stride_wt + slots[None, :], mask=ok, other=0.0)
        grad = tl.load(
            grad_weights_ptr + tokens[:, None] * stride_gt + slots[None, :] * stride_gk, mask=ok, other=0.0
        ).to(tl.float32)
        ids = tl.load(experts_ptr + tokens[:, None] * stride_et + slots[None, :], mask=ok, other=-1).to(tl.int32)
        # Softmax over the chosen logits: d z_j = w_j * (g_j - sum_i w_i g_i); unchosen logits get nothing.
        grad_chosen = weights * (grad - tl.sum(weights * grad, axis=1)[:, None])
        hits = ids[:, :, None] == cols[None, None, :]
        grad_logits = tl.sum(tl.where(hits, grad_chosen[:, :, None], 0.0), axis=1)
        tl.store(
            grad_logits_ptr + tokens[:, None] * stride_dt + cols[None, :],
            grad_logits.to(grad_logits_ptr.dtype.element_ty),
            mask=token_ok[:, None] & (cols < n_experts)[None, :],
        )

    @triton.jit
    def _permute_kernel(
        x_ptr,
        out_ptr,
        row_slots_ptr,
        n_rows,
        n_cols,
        stride_xt,
        stride_xh,
        stride_or,
        TOP_K: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK_H: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
        row_ok, col_ok = rows < n_rows, cols < n_cols
        slot = tl.load(row_slots_ptr + rows, mask=row_ok, other=-1)
        source = (tl.maximum(slot, 0) // TOP_K).to(tl.int64)
        # Padding rows (slot -1) come out as zeros, so they add nothing to the products downstream.
        values = tl.load(
            x_ptr + source[:, None] * stride_xt + cols[None, :] * stride_xh,
            mask=(slot >= 0)[:, None] & col_ok[None, :],
            other=0.0,
        )
        tl.store(out_ptr + rows[:, None] * stride_or + cols[None, :], values, mask=row_ok[:, None] & col_ok[None, :])

    @triton.jit
    def _permute_backward_kernel(
        grad_rows_ptr,
        grad_x_ptr,
        slot_rows_ptr,
        n_tokens,
        n_cols,
        stride_gr,
        stride_gh,
        stride_dt,
        TOP_K: tl.constexpr,
        BLOCK_T: tl.constexpr,
        BLOCK_H: tl.constexpr,
    ):
        tokens = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
        cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
        token_ok, col_ok = tokens < n_tokens, cols < n_cols
        acc = tl.zeros((BLOCK_T, BLOCK_H), dtype=tl.float32)
        for j in tl.static_range(TOP_K):
            row = tl.load(slot_rows_ptr + tokens * TOP_K + j, mask=token_ok, other=-1)
            acc += tl.load(
                grad_rows_ptr + tl.maximum(row, 0).to(tl.int64)[:, None] * stride_gr + cols[None, :] * stride_gh,
                mask=(row >= 0)[:, None] & col_ok[None, :],
                other=0.0,
            ).to(tl.float32)
        tl.store(
            grad_x_ptr + tokens[:, None] * stride_dt + cols[None, :],
            acc.to(grad_x_ptr.dtype.element_ty),
            mask=token_ok[:, None] & col_ok[None, :],
        )

    @triton.jit
    def _grouped_matmul_kernel(
        x_ptr,
        w_ptr,
        y_ptr,
        tile_experts_ptr,
        n_out,
        n_inner,
        stride_xm,
        stride_xk,
        stride_we,
        stride_wk,
        stride_wn,
        stride_ym,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        IEEE: tl.constexpr,
    ):
        tile = tl.program_id(0)
        expert = tl.load(tile_experts_ptr + tile).to(tl.int64)
        # The layout pads every expert to whole row tiles, so all BLOCK_M rows exist and share this expert.
        rows = (tile * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        outs = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        out_ok = outs < n_out
        w_base = w_ptr + expert * stride_we
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for start in range(0, n_inner, BLOCK_K):
            inner = start + tl.arange(0, BLOCK_K)
            inner_ok = inner < n_inner
            x = tl.load(
                x_ptr + rows[:, None] * stride_xm + inner[None, :] * stride_xk, mask=inner_ok[None, :], other=0.0
            )
            w = tl.load(
                w_base + inner[:, None] * stride_wk + outs[None, :] * stride_wn,
                mask=inner_ok[:, None] & out_ok[None, :],
                other=0.0,
            )
            if IEEE:
                acc = tl.dot(x, w, acc, input_precision="ieee")
            else:
                acc = tl.dot(x, w, acc)
        tl.store(
            y_ptr + rows[:, None] * stride_ym + outs[None, :], acc.to(y_ptr.dtype.element_ty), mask=out_ok[None, :]
        )

    @triton.jit
    def _grouped_weight_grad_kernel(
        x_ptr,
        grad_y_ptr,
        grad_w_ptr,
        expert_rows_ptr,
        n_inner,
        n_out,
        stride_xm,
        stride_xk,
        stride_gm,
        stride_gn,
        stride_we,
        stride_wk,
        BLOCK_M: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_N: tl.constexpr,
        IEEE: tl.constexpr,
    ):
        expert = tl.program_id(0)
        inner = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
        outs = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
        inner_ok, out_ok = inner < n_inner, outs < n_out
        first = tl.load(expert_rows_ptr + expert)
        end = tl.load(expert_rows_ptr + expert + 1)
        acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
        # An expert that got no tokens has first == end and a zero gradient.
        for start in range(first, end, BLOCK_M):
            rows = (start + tl.arange(0, BLOCK_M)).to(tl.int64)
            x_t = tl.load(
                x_ptr + rows[None, :] * stride_xm + inner[:, None] * stride_xk, mask=inner_ok[:, None], other=0.0
            )  # (BLOCK_K, BLOCK_M): this expert's inputs, transposed
            grad = tl.load(
                grad_y_ptr + rows[:, None] * stride_gm + outs[None, :] * stride_gn, mask=out_ok[None, :], other=0.0
            )
            if IEEE:
                acc = tl.dot(x_t, grad, acc, input_precision="ieee")
            else:
                acc = tl.dot(x_t, grad, acc)
        tl.store(
            grad_w_ptr + expert.to(tl.int64) * stride_we + inner[:, None] * stride_wk + outs[None, :],
            acc.to(grad_w_ptr.dtype.element_ty),
            mask=inner_ok[:, None] & out_ok[None, :],
        )

    @triton.jit
    def _unpermute_kernel(
        y_ptr,
        weights_ptr,
        out_ptr,
        slot_rows_ptr,
        n_tokens,
        n_cols,
        stride_yr,
        stride_yh,
        stride_wt,
        stride_wk,
        stride_ot,
        TOP_K: tl.constexpr,
        BLOCK_T: tl.constexpr,
        BLOCK_H: tl.constexpr,
    ):
        tokens = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
        cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
        token_ok, col_ok = tokens < n_tokens, cols < n_cols
        acc = tl.zeros((BLOCK_T, BLOCK_H), dtype=tl.float32)
        for j in tl.static_range(TOP_K):
            row = tl.load(slot_rows_ptr + tokens * TOP_K + j, mask=token_ok, other=-1)
            dispatched = row >= 0
            weight = tl.load(weights_ptr + tokens * stride_wt + j * stride_wk, mask=dispatched, other=0.0)
            values = tl.load(
                y_ptr + tl.maximum(row, 0).to(tl.int64)[:, None] * stride_yr + cols[None, :] * stride_yh,
                mask=dispatched[:, None] & col_ok[None, :],
                other=0.0,
            )
            acc += weight.to(tl.float32)[:, None] * values.to(tl.float32)
        tl.store(
            out_ptr + tokens[:, None] * stride_ot + cols[None, :],
            acc.to(out_ptr.dtype.element_ty),
            mask=token_ok[:, None] & col_ok[None, :],
        )

    @triton.jit
    def _unpermute_backward_kernel(
        grad_out_ptr,
        y_ptr,
        weights_ptr,
        grad_y_ptr,
        grad_weights_ptr,
        slot_rows_ptr,
        n_tokens,
        n_cols,
        stride_gt,
        stride_gh,
        stride_yr,
        stride_yh,
        stride_wt,
        stride_wk,
        stride_dyr,
        stride_dwt,
        TOP_K: tl.constexpr,
        BLOCK_T: tl.constexpr,
        BLOCK_H: tl.constexpr,
    ):
        tokens = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
        token_ok = tokens < n_tokens
        for j in tl.static_range(TOP_K):
            row = tl.load(slot_rows_ptr + tokens * TOP_K + j, mask=token_ok, other=-1)
            dispatched = row >= 0
            safe_row = tl.maximum(row, 0).to(tl.int64)
            weight = tl.load(weights_ptr + tokens * stride_wt + j * stride_wk, mask=dispatched, other=0.0)
            grad_weight = tl.zeros((BLOCK_T,), dtype=tl.float32)
            for start in range(0, n_cols, BLOCK_H):
                cols = start + tl.arange(0, BLOCK_H)
                ok = dispatched[:, None] & (cols < n_cols)[None, :]
                grad = tl.load(
                    grad_out_ptr + tokens[:, None] * stride_gt + cols[None, :] * stride_gh, mask=ok, other=0.0
                ).to(tl.float32)
                values = tl.load(
                    y_ptr + safe_row[:, None] * stride_yr + cols[None, :] * stride_yh, mask=ok, other=0.0
                ).to(tl.float32)
                grad_weight += tl.sum(grad * values, axis=1)
                # Each permuted row belongs to one (token, choice), so these stores never collide.
                tl.store(
                    grad_y_ptr + safe_row[:, None] * stride_dyr + cols[None, :],
                    (weight.to(tl.float32)[:, None] * grad).to(grad_y_ptr.dtype.element_ty),
                    mask=ok,
                )
            tl.store(
                grad_weights_ptr + tokens * stride_dwt + j,
                grad_weight.to(grad_weights_ptr.dtype.element_ty),
                mask=token_ok,
            )


ROW_TILE = 16  # rows per tile of the grouped products; tl.dot needs at least 16
MAX_EXPERTS = 64  # the gating kernel holds a token's logits for all experts in one block
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


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


def _check_float(name: str, t: torch.Tensor, dim: int) -> None:
    if t.dim() != dim:
        raise ValueError(f"{name} must have {dim} dimensions, got shape {tuple(t.shape)}")
    if t.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{name} must be fp32, fp16 or bf16, got {t.dtype}")


def _check_device(layout: ExpertLayout, *tensors: torch.Tensor) -> None:
    devices = {t.device for t in (*tensors, layout.slot_rows)}
    if len(devices) != 1:
        raise ValueError(f"inputs and layout must be on one device, got {sorted(map(str, devices))}")


def _block(n: int, most: int) -> int:
    return max(16, min(most, triton.next_power_of_2(max(n, 1))))


def _topk_gating_forward(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    _check_float("router logits", logits, 2)
    n_tokens, n_experts = logits.shape
    if n_experts > MAX_EXPERTS:
        raise ValueError(
            f"{n_experts} experts is more than the gating kernel's {MAX_EXPERTS}; use MMODAL_KERNELS=torch"
        )
    if not 1 <= top_k <= n_experts:
        raise ValueError(f"top_k must be in 1..{n_experts}, got {top_k}")
    weights = torch.empty(n_tokens, top_k, device=logits.device, dtype=torch.float32)
    experts = torch.empty(n_tokens, top_k, device=logits.device, dtype=torch.int64)
    if n_tokens == 0:
        return weights, experts
    block_t = 16
    _topk_gating_forward_kernel[(triton.cdiv(n_tokens, block_t),)](
        logits,
        weights,
        experts,
        n_tokens,
        n_experts,
        logits.stride(0),
        logits.stride(1),
        weights.stride(0),
        experts.stride(0),
        TOP_K=top_k,
        BLOCK_T=block_t,
        BLOCK_E=triton.next_power_of_2(n_experts),
        BLOCK_K=triton.next_power_of_2(top_k),
    )
    return weights, experts


def _topk_gating_backward(
    weights: torch.Tensor, grad_weights: torch.Tensor, experts: torch.Tensor, n_experts: int, dtype: torch.dtype
) -> torch.Tensor:
    n_tokens, top_k = weights.shape
    grad_logits = torch.empty(n_tokens, n_experts, device=weights.device, dtype=dtype)
    if n_tokens == 0:
        return grad_logits
    block_t = 16
    _topk_gating_backward_kernel[(triton.cdiv(n_tokens, block_t),)](
        weights,
        grad_weights,
        experts,
        grad_logits,
        n_tokens,
        n_experts,
        weights.stride(0),
        grad_weights.stride(0),
        grad_weights.stride(1),
        experts.stride(0),
        grad_logits.stride(0),
        TOP_K=top_k,
        BLOCK_T=block_t,
        BLOCK_E=triton.next_power_of_2(n_experts),
        BLOCK_K=triton.next_power_of_2(top_k),
    )
    return grad_logits


def _permute_forward(x: torch.Tensor, layout: ExpertLayout) -> torch.Tensor:
    _check_float("tokens", x, 2)
    _check_device(layout, x)
    if x.shape[0] != layout.slot_rows.shape[0]:
        raise ValueError(f"{x.shape[0]} tokens, but the layout was built for {layout.slot_rows.shape[0]}")
    n_cols = x.shape[1]
    out = torch.empty(layout.n_rows, n_cols, device=x.device, dtype=x.dtype)
    if layout.n_rows == 0 or n_cols == 0:
        return out
    block_r, block_h = 16, _block(n_cols, 128)
    _permute_kernel[(triton.cdiv(layout.n_rows, block_r), triton.cdiv(n_cols, block_h))](
        x,
        out,
        layout.row_slots,
        layout.n_rows,
        n_cols,
        x.stride(0),
        x.stride(1),
        out.stride(0),
        TOP_K=layout.top_k,
        BLOCK_R=block_r,
        BLOCK_H=block_h,
    )
    return out


def _permute_backward(grad_rows: torch.Tensor, layout: ExpertLayout) -> torch.Tensor:
    n_tokens, n_cols = layout.slot_rows.shape[0], grad_rows.shape[1]
    grad_x = torch.empty(n_tokens, n_cols, device=grad_rows.device, dtype=grad_rows.dtype)
    if n_tokens == 0 or n_cols == 0:
        return grad_x
    block_t, block_h = 16, _block(n_cols, 128)
    _permute_backward_kernel[(triton.cdiv(n_tokens, block_t), triton.cdiv(n_cols, block_h))](
        grad_rows,
        grad_x,
        layout.slot_rows,
        n_tokens,
        n_cols,
        grad_rows.stride(0),
        grad_rows.stride(1),
        grad_x.stride(0),
        TOP_K=layout.top_k,
        BLOCK_T=block_t,
        BLOCK_H=block_h,
    )
    return grad_x


def _check_grouped(x: torch.Tensor, w: torch.Tensor, layout: ExpertLayout) -> None:
    _check_float("grouped matmul input", x, 2)
    _check_float("expert weights", w, 3)
    _check_device(layout, x, w)
    if x.dtype != w.dtype:
        raise ValueError(f"input and expert weights must share a dtype, got {x.dtype} and {w.dtype}")
    if w.shape[0] != layout.n_experts or w.shape[1] != x.shape[1]:
        raise ValueError(
            f"expert weights must be ({layout.n_experts}, {x.shape[1]}, N) for this layout and input, "
            f"got {tuple(w.shape)}"
        )
    if x.shape[0] != layout.n_rows:
        raise ValueError(f"input has {x.shape[0]} rows, the layout {layout.n_rows}")


def _grouped_matmul_forward(x: torch.Tensor, w: torch.Tensor, layout: ExpertLayout) -> torch.Tensor:
    """``x @ w[e]`` per row tile; ``w`` may be any strided view, e.g. a transpose for the input gradient."""
    n_inner, n_out = w.shape[1], w.shape[2]
    y = torch.empty(x.shape[0], n_out, device=x.device, dtype=x.dtype)
    n_tiles = layout.tile_experts.shape[0]
    if n_tiles == 0 or n_out == 0:
        return y
    if n_inner == 0:
        return y.zero_()
    block_n, block_k = _block(n_out, 128), _block(n_inner, 64)
    _grouped_matmul_kernel[(n_tiles, triton.cdiv(n_out, block_n))](
        x,
        w,
        y,
        layout.tile_experts,
        n_out,
        n_inner,
        x.stride(0),
        x.stride(1),
        w.stride(0),
        w.stride(1),
        w.stride(2),
        y.stride(0),
        BLOCK_M=layout.row_tile,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        IEEE=x.dtype == torch.float32,
    )
    return y


def _grouped_weight_grad(x: torch.Tensor, grad_y: torch.Tensor, layout: ExpertLayout) -> torch.Tensor:
    n_inner, n_out = x.shape[1], grad_y.shape[1]
    grad_w = torch.empty(layout.n_experts, n_inner, n_out, device=x.device, dtype=x.dtype)
    if grad_w.numel() == 0:
        return grad_w
    block_k, block_n = _block(n_inner, 64), _block(n_out, 128)
    _grouped_weight_grad_kernel[(layout.n_experts, triton.cdiv(n_inner, block_k), triton.cdiv(n_out, block_n))](
        x,
        grad_y,
        grad_w,
        layout.expert_rows,
        n_inner,
        n_out,
        x.stride(0),
        x.stride(1),
        grad_y.stride(0),
        grad_y.stride(1),
        grad_w.stride(0),
        grad_w.stride(1),
        BLOCK_M=layout.row_tile,
        BLOCK_K=block_k,
        BLOCK_N=block_n,
        IEEE=x.dtype == torch.float32,
    )
    return grad_w


def _check_unpermute(y: torch.Tensor, weights: torch.Tensor, layout: ExpertLayout) -> None:
    _check_float("expert outputs", y, 2)
    _check_float("routing weights", weights, 2)
    _check_device(layout, y, weights)
    if y.shape[0] != layout.n_rows:
        raise ValueError(f"expert outputs have {y.shape[0]} rows, the layout {layout.n_rows}")
    if weights.shape != layout.slot_rows.shape:
        raise ValueError(f"routing weights must be {tuple(layout.slot_rows.shape)}, got {tuple(weights.shape)}")


def _unpermute_forward(y: torch.Tensor, weights: torch.Tensor, layout: ExpertLayout) -> torch.Tensor:
    n_tokens, n_cols = layout.slot_rows.shape[0], y.shape[1]
    out = torch.empty(n_tokens, n_cols, device=y.device, dtype=y.dtype)
    if n_tokens == 0 or n_cols == 0:
        return out
    block_t, block_h = 16, _block(n_cols, 128)
    _unpermute_kernel[(triton.cdiv(n_tokens, block_t), triton.cdiv(n_cols, block_h))](
        y,
        weights,
        out,
        layout.slot_rows,
        n_tokens,
        n_cols,
        y.stride(0),
        y.stride(1),
        weights.stride(0),
        weights.stride(1),
        out.stride(0),
        TOP_K=layout.top_k,
        BLOCK_T=block_t,
        BLOCK_H=block_h,
    )
    return out


def _unpermute_backward(
    grad_out: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, layout: ExpertLayout
) -> tuple[torch.Tensor, torch.Tensor]:
    n_tokens, n_cols = grad_out.shape
    # Padding rows feed no token, so their gradient stays zero.
    grad_y = torch.zeros_like(y)
    grad_weights = torch.empty(n_tokens, layout.top_k, device=y.device, dtype=weights.dtype)
    if n_tokens == 0:
        return grad_y, grad_weights
    block_t = 16
    _unpermute_backward_kernel[(triton.cdiv(n_tokens, block_t),)](
        grad_out,
        y,
        weights,
        grad_y,
        grad_weights,
        layout.slot_rows,
        n_tokens,
        n_cols,
        grad_out.stride(0),
        grad_out.stride(1),
        y.stride(0),
        y.stride(1),
        weights.stride(0),
        weights.stride(1),
        grad_y.stride(0),
        grad_weights.stride(0),
        TOP_K=layout.top_k,
        BLOCK_T=block_t,
        BLOCK_H=_block(n_cols, 128),
    )
    return grad_y, grad_weights


class TopKGatingFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, top_k: int):
        weights, experts = _topk_gating_forward(logits, top_k)
        ctx.save_for_backward(weights, experts)
        ctx.n_experts, ctx.logits_dtype = logits.shape[1], logits.dtype
        ctx.mark_non_differentiable(experts)
        return weights, experts

    @staticmethod
    def backward(ctx, grad_weights, _grad_experts):
        weights, experts = ctx.saved_tensors
        return _topk_gating_backward(weights, grad_weights, experts, ctx.n_experts, ctx.logits_dtype), None


class PermuteTokensFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, layout: ExpertLayout):
        ctx.layout = layout
        return _permute_forward(x, layout)

    @staticmethod
    def backward(ctx, grad_rows):
        return _permute_backward(grad_rows, ctx.layout), None


class GroupedMatmulFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, layout: ExpertLayout):
        _check_grouped(x, w, layout)
        ctx.save_for_backward(x, w)
        ctx.layout = layout
        return _grouped_matmul_forward(x, w, layout)

    @staticmethod
    def backward(ctx, grad_y):
        x, w = ctx.saved_tensors
        grad_x = _grouped_matmul_forward(grad_y, w.transpose(1, 2), ctx.layout) if ctx.needs_input_grad[0] else None
        grad_w = _grouped_weight_grad(x, grad_y, ctx.layout) if ctx.needs_input_grad[1] else None
        return grad_x, grad_w, None


class UnpermuteTokensFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y: torch.Tensor, weights: torch.Tensor, layout: ExpertLayout):
        _check_unpermute(y, weights, layout)
        ctx.save_for_backward(y, weights)
        ctx.layout = layout
        return _unpermute_forward(y, weights, layout)

    @staticmethod
    def backward(ctx, grad_out):
        y, weights = ctx.saved_tensors
        grad_y, grad_weights = _unpermute_backward(grad_out, y, weights, ctx.layout)
        return grad_y, grad_weights, None


def topk_gating_reference(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain-torch gating: fp32 softmax over the experts, top k, renormalised; (fp32 weights, int64 ids)."""
    weights, experts = logits.float().softmax(dim=-1).topk(top_k, dim=-1)
    return weights / weights.sum(dim=-1, keepdim=True), experts


def permute_tokens_reference(x: torch.Tensor, layout: ExpertLayout) -> torch.Tensor:
    slots = layout.row_slots.long()
    dispatched = (slots >= 0)[:, None]
    return torch.where(dispatched, x[slots.clamp_min(0) // layout.top_k], x.new_zeros(()))


def grouped_matmul_reference(x: torch.Tensor, w: torch.Tensor, layout: ExpertLayout) -> torch.Tensor:
    bounds = layout.expert_rows.tolist()
    return torch.cat([x[bounds[e] : bounds[e + 1]] @ w[e] for e in range(layout.n_experts)])


def unpermute_tokens_reference(y: torch.Tensor, weights: torch.Tensor, layout: ExpertLayout) -> torch.Tensor:
    rows = layout.slot_rows.long()
    dispatched = rows >= 0
    gathered = y[rows.clamp_min(0)]  # (N, k, H)
    return (gathered * torch.where(dispatched, weights, 0).to(y.dtype)[..., None]).sum(dim=1)


def moe_experts_reference(
    tokens: torch.Tensor,
    router_logits: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    top_k: int,
    keep: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The plain-torch routed experts: one masked gather, two products and an index_add per expert."""
    if keep is None:
        keep = torch.ones_like(tokens[:, 0], dtype=torch.bool)
    weights, experts = topk_gating_reference(router_logits, top_k)
    weights = weights.to(tokens.dtype)
    routed = torch.zeros_like(tokens)
    for e in range(w_gate_up.shape[0]):
        rows, slot = torch.where((experts == e) & keep[:, None])
        if rows.numel() == 0:
            continue
        gate, up = (tokens[rows] @ w_gate_up[e]).chunk(2, dim=-1)
        out = (F.silu(gate) * up) @ w_down[e]  # (n_e, H)
        routed.index_add_(0, rows, out * weights[rows, slot, None])
    return routed, weights, experts


def topk_gating(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Router logits (N, E) → fp32 weights (N, k) (softmax, top k, renormalised) and int64 expert ids (N, k),
    highest weight first."""
    if use_triton(logits):
        return TopKGatingFunction.apply(logits, top_k)
    return topk_gating_reference(logits, top_k)


def permute_tokens(x: torch.Tensor, layout: ExpertLayout) -> torch.Tensor:
    """Tokens (N, H) → rows (R, H) grouped by expert as ``layout`` says, padding rows zero."""
    if use_triton(x):
        return PermuteTokensFunction.apply(x, layout)
    return permute_tokens_reference(x, layout)


def grouped_matmul(x: torch.Tensor, w: torch.Tensor, layout: ExpertLayout) -> torch.Tensor:
    """Rows (R, K) grouped by expert, expert weights (E, K, N) → rows (R, N), each row times its expert's matrix."""
    if use_triton(x, w):
        return GroupedMatmulFunction.apply(x, w, layout)
    return grouped_matmul_reference(x, w, layout)


def unpermute_tokens(y: torch.Tensor, weights: torch.Tensor, layout: ExpertLayout) -> torch.Tensor:
    """Rows (R, H), weights (N, k) → tokens (N, H): each token's rows summed with its weights (zero if not
    dispatched)."""
    if use_triton(y, weights):
        return UnpermuteTokensFunction.apply(y, weights, layout)
    return unpermute_tokens_reference(y, weights, layout)


def moe_experts(
    tokens: torch.Tensor,
    router_logits: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    top_k: int,
    keep: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The routed experts' output for each token.

    Args:
        tokens: (N, H) inputs.
        router_logits: (N, E) router scores.
        w_gate_up: (E, H, 2F) each expert's gate and up projections side by side.
        w_down: (E, F, H) each expert's down projection.
        top_k: experts per token.
        keep: (N,) bool; tokens with False (padding) are not dispatched and get zeros. None keeps all.

    Returns:
        ``(routed (N, H), weights (N, k) in the tokens' dtype, experts (N, k) int64)``.
    """
    if tokens.dim() != 2 or router_logits.shape != (tokens.shape[0], w_gate_up.shape[0]):
        raise ValueError(
            f"tokens must be (N, H) and router logits (N, E={w_gate_up.shape[0]}), "
            f"got {tuple(tokens.shape)} and {tuple(router_logits.shape)}"
        )
    if not use_triton(tokens, router_logits, w_gate_up, w_down):
        return moe_experts_reference(tokens, router_logits, w_gate_up, w_down, top_k, keep)
    weights, experts = topk_gating(router_logits, top_k)
    weights = weights.to(tokens.dtype)
    layout = expert_layout(experts, keep, w_gate_up.shape[0])
    rows = permute_tokens(tokens, layout)
    gate, up = grouped_matmul(rows, w_gate_up, layout).chunk(2, dim=-1)
    hidden = grouped_matmul(F.silu(gate) * up, w_down, layout)
    return unpermute_tokens(hidden, weights, layout), weights, experts
