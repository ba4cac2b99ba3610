"""The sparse-MoE Triton kernels against their plain-torch references: forward outputs and every gradient."""

from __future__ import annotations

import pytest
import torch

from mmodal.encoders.language import MoEConfig, SparseMoE
from mmodal.kernels.moe import (
    expert_layout,
    grouped_matmul,
    moe_experts,
    permute_tokens,
    topk_gating,
    unpermute_tokens,
)

# fp32 kernels accumulate in a different order from torch's matmul and index_add, nothing more.
FP32 = {"atol": 2e-5, "rtol": 1e-4}
# bf16/fp16 inputs with fp32 accumulation, against the reference in the same dtype.
HALF = {"atol": 3e-2, "rtol": 3e-2}

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="half precision kernels need CUDA")


def _grads(out: torch.Tensor, inputs: list[torch.Tensor], seed: int = 1) -> list[torch.Tensor]:
    """Gradients of a fixed random projection of ``out``, so that every output element matters."""
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out)
    return list(torch.autograd.grad(out, inputs, upstream, allow_unused=True))


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


def _routing(n_tokens: int, n_experts: int, top_k: int, idle_expert: bool, seed: int = 0):
    """Random router logits; with ``idle_expert`` the last expert is never among any token's top k."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n_tokens, n_experts, generator=g)
    if idle_expert:
        logits[:, -1] -= 50.0
    experts = logits.topk(top_k, dim=-1).indices
    return logits, experts


def _keep(n_tokens: int, masked: tuple[int, ...]) -> torch.Tensor:
    keep = torch.ones(n_tokens, dtype=torch.bool)
    keep[list(masked)] = False
    return keep


@pytest.mark.parametrize(
    ("n_tokens", "n_experts", "top_k"), [(1, 3, 1), (13, 5, 2), (37, 7, 2), (20, 6, 6), (5, 64, 3)]
)
def test_topk_gating_matches_reference(monkeypatch, n_tokens, n_experts, top_k):
    logits, _ = _routing(n_tokens, n_experts, top_k, idle_expert=False)
    results = {}
    for mode in ("torch", "triton"):
        monkeypatch.setenv("MMODAL_KERNELS", mode)
        z = _leaf(logits)
        weights, experts = topk_gating(z, top_k)
        results[mode] = (weights, experts, *_grads(weights, [z]))
    (w_ref, e_ref, dz_ref), (w_tri, e_tri, dz_tri) = results["torch"], results["triton"]
    assert e_tri.dtype == torch.int64
    assert torch.equal(e_tri, e_ref)
    torch.testing.assert_close(w_tri, w_ref, **FP32)
    torch.testing.assert_close(dz_tri, dz_ref, **FP32)
    unchosen = torch.ones_like(dz_tri, dtype=torch.bool).scatter_(1, e_tri, False)
    assert torch.all(dz_tri[unchosen] == 0)


def test_expert_layout_groups_rows_by_expert():
    _, experts = _routing(11, 4, 2, idle_expert=True)
    keep = _keep(11, (0, 7))
    layout = expert_layout(experts, keep, 4, row_tile=16)
    bounds = layout.expert_rows.tolist()
    assert bounds[0] == 0 and bounds[-1] == layout.n_rows
    assert all((b - a) % 16 == 0 for a, b in zip(bounds, bounds[1:]))
    assert bounds[4] == bounds[3]  # the idle expert owns no rows
    assert layout.tile_experts.tolist() == [e for e in range(4) for _ in range((bounds[e + 1] - bounds[e]) // 16)]
    assert torch.all(layout.slot_rows[~keep] == -1)
    for token, choice in zip(*torch.where(keep[:, None].expand_as(experts))):
        row = int(layout.slot_rows[token, choice])
        expert = int(experts[token, choice])
        assert bounds[expert] <= row < bounds[expert + 1]
        assert int(layout.row_slots[row]) == token * 2 + choice
    assert int((layout.row_slots >= 0).sum()) == int(keep.sum()) * 2 == int(layout.tokens_per_expert.sum())


@pytest.mark.parametrize(("n_tokens", "n_cols", "top_k", "masked"), [(1, 7, 1, ()), (19, 33, 2, (2, 3, 18))])
def test_permute_tokens_matches_reference(monkeypatch, n_tokens, n_cols, top_k, masked):
    _, experts = _routing(n_tokens, 5, top_k, idle_expert=True)
    layout = expert_layout(experts, _keep(n_tokens, masked), 5)
    x0 = torch.randn(n_tokens, n_cols, generator=torch.Generator().manual_seed(2))
    results = {}
    for mode in ("torch", "triton"):
        monkeypatch.setenv("MMODAL_KERNELS", mode)
        x = _leaf(x0)
        rows = permute_tokens(x, layout)
        results[mode] = (rows, *_grads(rows, [x]))
    torch.testing.assert_close(results["triton"][0], results["torch"][0], atol=0, rtol=0)
    torch.testing.assert_close(results["triton"][1], results["torch"][1], **FP32)


@pytest.mark.parametrize(("n_tokens", "n_inner", "n_out", "top_k"), [(1, 16, 24, 1), (23, 37, 70, 2)])
def test_grouped_matmul_matches_reference(monkeypatch, n_tokens, n_inner, n_out, top_k):
    n_experts = 4
    _, experts = _routing(n_tokens, n_experts, top_k, idle_expert=True)
    layout = expert_layout(experts, None, n_experts)
    g = torch.Generator().manual_seed(3)
    # Padding rows carry values too, so the test sees that each tile uses exactly its own expert's matrix.
    x0 = torch.randn(layout.n_rows, n_inner, generator=g)
    w0 = torch.randn(n_experts, n_inner, n_out, generator=g) / n_inner**0.5
    results = {}
    for mode in ("torch", "triton"):
        monkeypatch.setenv("MMODAL_KERNELS", mode)
        x, w = _leaf(x0), _leaf(w0)
        y = grouped_matmul(x, w, layout)
        results[mode] = (y, *_grads(y, [x, w]))
    for got, want in zip(results["triton"], results["torch"]):
        torch.testing.assert_close(got, want, **FP32)
    assert torch.all(results["triton"][2][-1] == 0)  # the idle expert's weight gradient


@pytest.mark.parametrize(("n_tokens", "n_cols", "top_k", "masked"), [(1, 9, 1, ()), (21, 45, 2, (0, 20))])
def test_unpermute_tokens_matches_reference(monkeypatch, n_tokens, n_cols, top_k, masked):
    _, experts = _routing(n_tokens, 5, top_k, idle_expert=True)
    keep = _keep(n_tokens, masked)
    layout = expert_layout(experts, keep, 5)
    g = torch.Generator().manual_seed(4)
    y0 = torch.randn(layout.n_rows, n_cols, generator=g)
    w0 = torch.rand(n_tokens, top_k, generator=g)
    results = {}
    for mode in ("torch", "triton"):
        monkeypatch.setenv("MMODAL_KERNELS", mode)
        y, w = _leaf(y0), _leaf(w0)
        out = unpermute_tokens(y, w, layout)
        results[mode] = (out, *_grads(out, [y, w]))
    for got, want in zip(results["triton"], results["torch"]):
        torch.testing.assert_close(got, want, **FP32)
    assert torch.all(results["triton"][0][~keep] == 0)
    assert torch.all(results["triton"][2][~keep] == 0)


def _moe_case(n_tokens, hidden, inner, n_experts, top_k, idle_expert, dtype=torch.float32, device="cpu", seed=5):
    g = torch.Generator().manual_seed(seed)
    logits, _ = _routing(n_tokens, n_experts, top_k, idle_expert, seed=seed)
    tokens = torch.randn(n_tokens, hidden, generator=g)
    w_gate_up = torch.randn(n_experts, hidden, 2 * inner, generator=g) / hidden**0.5
    w_down = torch.randn(n_experts, inner, hidden, generator=g) / inner**0.5
    return [t.to(device=device, dtype=dtype) for t in (tokens, logits, w_gate_up, w_down)]


def _run_moe(monkeypatch, mode, inputs, top_k, keep):
    monkeypatch.setenv("MMODAL_KERNELS", mode)
    leaves = [_leaf(t) for t in inputs]
    routed, weights, experts = moe_experts(*leaves, top_k, keep)
    # Both outputs carry gradient, as in training (weights also feed nothing else, but they could).
    loss_out = routed.float() * torch.randn(routed.shape, generator=torch.Generator().manual_seed(6)).to(routed.device)
    loss = loss_out.sum() + (weights.float() * torch.arange(top_k, device=weights.device)).sum()
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    # The reference never touches the tokens or expert weights when no token is dispatched.
    return routed, weights, experts, *(torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads))


MOE_CASES = {
    "single-token-top1": (1, 24, 16, 4, 1, False, ()),
    "odd-sizes-top2-masked-idle-expert": (29, 37, 19, 5, 2, True, (0, 4, 28)),
    "top1-idle-expert": (17, 20, 12, 3, 1, True, (5,)),
    "every-token-masked": (6, 16, 8, 4, 2, False, (0, 1, 2, 3, 4, 5)),
}


@pytest.mark.parametrize("case", MOE_CASES.values(), ids=MOE_CASES.keys())
def test_moe_experts_matches_reference(monkeypatch, case):
    n_tokens, hidden, inner, n_experts, top_k, idle_expert, masked = case
    inputs = _moe_case(n_tokens, hidden, inner, n_experts, top_k, idle_expert)
    keep = _keep(n_tokens, masked)
    want = _run_moe(monkeypatch, "torch", inputs, top_k, keep)
    got = _run_moe(monkeypatch, "triton", inputs, top_k, keep)
    names = ["routed", "weights", "experts", "d tokens", "d router logits", "d w_gate_up", "d w_down"]
    assert torch.equal(got[2], want[2])
    for name, g, w in zip(names, got, want):
        torch.testing.assert_close(g, w, **FP32, msg=lambda m, name=name: f"{name}: {m}")
    assert torch.all(got[0][~keep] == 0)
    if idle_expert:
        assert torch.all(got[5][-1] == 0) and torch.all(got[6][-1] == 0)


@cuda_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_moe_experts_half_precision_matches_reference(monkeypatch, dtype):
    inputs = _moe_case(45, 72, 40, 6, 2, True, dtype=dtype, device="cuda")
    keep = _keep(45, (3, 44)).cuda()
    want = _run_moe(monkeypatch, "torch", inputs, 2, keep)
    got = _run_moe(monkeypatch, "triton", inputs, 2, keep)
    assert torch.equal(got[2], want[2])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **HALF)


def test_sparse_moe_layer_is_the_same_with_either_path(monkeypatch):
    config = MoEConfig(hidden_size=24, num_heads=2, n_routed_experts=4, experts_per_token=2, expert_hidden_size=20)
    torch.manual_seed(7)
    layer = SparseMoE(config)
    x = torch.randn(2, 9, 24)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    results = {}
    for mode in ("torch", "triton"):
        monkeypatch.setenv("MMODAL_KERNELS", mode)
        layer.zero_grad()
        out, aux, stats = layer(x, mask)
        (out.sum() + aux).backward()
        results[mode] = (out, aux, stats.tokens_per_expert, *(p.grad.clone() for p in layer.parameters()))
    for got, want in zip(results["triton"], results["torch"]):
        torch.testing.assert_close(got, want, **FP32)


def test_launchers_reject_mismatched_inputs(monkeypatch):
    monkeypatch.setenv("MMODAL_KERNELS", "triton")
    tokens, logits, w_gate_up, w_down = _moe_case(4, 8, 8, 3, 2, False)
    with pytest.raises(ValueError, match="top_k"):
        topk_gating(logits, 4)
    with pytest.raises(ValueError, match="router logits"):
        moe_experts(tokens, logits[:, :2], w_gate_up, w_down, 2)
    layout = expert_layout(logits.topk(2, dim=-1).indices, None, 3)
    with pytest.raises(ValueError, match="share a dtype"):
        grouped_matmul(torch.zeros(layout.n_rows, 8, dtype=torch.float16), w_gate_up, layout)
    with pytest.raises(ValueError, match="expert weights must be"):
        grouped_matmul(torch.zeros(layout.n_rows, 8), w_gate_up[:2], layout)
    with pytest.raises(ValueError, match="keep"):
        expert_layout(logits.topk(2, dim=-1).indices, torch.ones(5, dtype=torch.bool), 3)


@pytest.mark.slow  # three MoE layers under the interpreter take several seconds
def test_shipped_model_text_embeddings_are_the_same_with_either_path(monkeypatch, model):
    texts = ["a red circle left of a blue square", "two stars"]
    embeddings = {}
    for mode in ("torch", "triton"):
        monkeypatch.setenv("MMODAL_KERNELS", mode)
        embeddings[mode] = model.encode_text(texts)
    torch.testing.assert_close(embeddings["triton"], embeddings["torch"], atol=1e-5, rtol=1e-4)
