"""The routed experts of a sparse mixture-of-experts layer, as four Triton op pieces and their composition.

For tokens ``x`` (N, H), router logits ``z`` (N, E) and stacked SwiGLU expert weights ``w_gate_up`` (E, H, 2F) and
``w_down`` (E, F, H), each token goes to its ``k`` highest-scoring experts and gets back

    out[t] = sum_j weight[t, j] * down_e(silu(gate_e(x[t])) * up_e(x[t])),   e = expert[t, j],

where ``weight[t]`` is the softmax over E, cut to the top k and renormalised (the softmax over the k selected
logits). Tokens with ``keep[t]`` False are not dispatched and get zeros.

:func:`moe_experts` (:mod:`~mmodal.kernels.moe.experts`) runs the pipeline, a module a step, each with a Triton forward
and backward and a plain-torch reference (the CPU path and the kernels' test oracle):

1. :mod:`~mmodal.kernels.moe.gating`: :func:`topk_gating`, logits (N, E) → weights (N, k) and expert ids (N, k).
2. :mod:`~mmodal.kernels.moe.layout`: :func:`expert_layout`, where each (token, choice) sits in a buffer of rows grouped
   by expert, every expert's rows padded to a multiple of the row tile so that each row tile belongs to one
   expert (index bookkeeping in torch, no kernel).
3. :mod:`~mmodal.kernels.moe.permute`: :func:`permute_tokens` copies each (token, choice) into its row.
4. :mod:`~mmodal.kernels.moe.grouped_matmul`: :func:`grouped_matmul`, each row tile times its expert's matrix, once for
   the gate and up projections and, after SiLU(gate) * up in torch, once for the down projection.
5. :mod:`~mmodal.kernels.moe.permute`: :func:`unpermute_tokens`, ``out[t] = sum_j weight[t, j] * Y[row of (t, j)]``.
"""

from mmodal.kernels.moe.experts import moe_experts, moe_experts_reference
from mmodal.kernels.moe.gating import MAX_EXPERTS, TopKGatingFunction, topk_gating, topk_gating_reference
from mmodal.kernels.moe.grouped_matmul import GroupedMatmulFunction, grouped_matmul, grouped_matmul_reference
from mmodal.kernels.moe.layout import ROW_TILE, ExpertLayout, expert_layout
from mmodal.kernels.moe.permute import (
    PermuteTokensFunction,
    UnpermuteTokensFunction,
    permute_tokens,
    permute_tokens_reference,
    unpermute_tokens,
    unpermute_tokens_reference,
)

__all__ = [
    "MAX_EXPERTS",
    "ROW_TILE",
    "ExpertLayout",
    "GroupedMatmulFunction",
    "PermuteTokensFunction",
    "TopKGatingFunction",
    "UnpermuteTokensFunction",
    "expert_layout",
    "grouped_matmul",
    "grouped_matmul_reference",
    "moe_experts",
    "moe_experts_reference",
    "permute_tokens",
    "permute_tokens_reference",
    "topk_gating",
    "topk_gating_reference",
    "unpermute_tokens",
    "unpermute_tokens_reference",
]
