"""masked_attention: the Triton kernels (under the interpreter on CPU) against the plain-torch reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmodal.kernels.attention import (
    MAX_HEAD_DIM,
    attention_probabilities,
    masked_attention,
    masked_attention_reference,
    multihead_attention,
)

# fp32 kernel vs reference: both round in float32, but sum in a different order (blocked online softmax).
FP32_TOLERANCE = dict(atol=2e-5, rtol=1e-4)
# bf16 / fp16 inputs with fp32 accumulation, against the reference run in float32.
HALF_TOLERANCE = dict(atol=3e-2, rtol=3e-2)


def _inputs(batch, heads, len_q, len_k, head_dim, padded=True, empty_items=(), seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (
        torch.randn(batch, heads, t, head_dim, generator=generator).to(dtype).requires_grad_()
        for t in (len_q, len_k, len_k)
    )
    key_mask = None
    if padded:
        key_mask = torch.rand(batch, len_k, generator=generator) > 0.3
        key_mask[:, 0] = True  # most rows see something; empty ones come from empty_items and causal masks
        for item in empty_items:
            key_mask[item] = False
    return q, k, v, key_mask


def _run(monkeypatch, kernels, q, k, v, key_mask, **options):
    """Output and the gradients of q, k, v for a fixed upstream gradient, with MMODAL_KERNELS=kernels."""
    monkeypatch.setenv("MMODAL_KERNELS", kernels)
    out = masked_attention(q, k, v, key_mask=key_mask, **options)
    if kernels == "triton":
        assert type(out.grad_fn).__name__ == "MaskedAttentionFunctionBackward"
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.device, out.dtype)
    grads = torch.autograd.grad(out, (q, k, v), upstream)
    return (out, *grads)


def _expected_visibility(key_mask, len_q, len_k, causal, prefix, see_self):
    """The rule written out key by key, independent of the implementation's broadcasting."""
    batch = key_mask.shape[0]
    visible = torch.zeros(batch, 1, len_q, len_k, dtype=torch.bool)
    for b in range(batch):
        for i in range(len_q):
            for j in range(len_k):
                seen = bool(key_mask[b, j]) and (not causal or j <= i or j < prefix)
                visible[b, 0, i, j] = seen or (see_self and i == j)
    return visible


CASES = {
    "cross, Tq != Tk, d=24": dict(shape=(2, 2, 5, 11, 24)),
    "a single query row": dict(shape=(3, 2, 1, 9, 8)),
    "odd lengths, d=40": dict(shape=(2, 1, 13, 7, 40)),
    "no key mask": dict(shape=(2, 2, 7, 6, 16), padded=False),
    "fully masked items": dict(shape=(3, 2, 6, 10, 16), empty_items=(0, 2)),
    "see_self over padding": dict(shape=(2, 2, 9, 9, 24), empty_items=(1,), options=dict(see_self=True)),
    "causal with prefix and see_self": dict(
        shape=(2, 2, 13, 13, 24), empty_items=(1,), options=dict(causal=True, prefix=4, see_self=True)
    ),
    "causal, more queries than keys": dict(shape=(2, 1, 20, 9, 16), options=dict(causal=True, prefix=2)),
    "causal over several blocks": dict(shape=(1, 2, 70, 70, 32), options=dict(causal=True, prefix=5, see_self=True)),
    "head dim 128": dict(shape=(1, 1, 5, 6, MAX_HEAD_DIM)),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_kernel_matches_reference_output_and_gradients(monkeypatch, case):
    q, k, v, key_mask = _inputs(
        *case["shape"], padded=case.get("padded", True), empty_items=case.get("empty_items", ())
    )
    options = case.get("options", {})
    got = _run(monkeypatch, "triton", q, k, v, key_mask, **options)
    want = _run(monkeypatch, "torch", q, k, v, key_mask, **options)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, b, **FP32_TOLERANCE, msg=lambda m, name=name: f"{name}: {m}")


def test_kernel_takes_strided_views(monkeypatch):
    """q, k, v as the language core makes them: views into one packed projection, not contiguous."""
    batch, tokens, heads, head_dim = 2, 11, 2, 24
    packed = torch.randn(batch, tokens, 3 * heads * head_dim, requires_grad=True)
    q, k, v = packed.view(batch, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    assert not q.is_contiguous()
    key_mask = torch.arange(tokens)[None, :] < torch.tensor([[tokens], [6]])
    results = []
    for kernels in ("triton", "torch"):
        monkeypatch.setenv("MMODAL_KERNELS", kernels)
        out = masked_attention(q, k, v, key_mask=key_mask, see_self=True)
        (grad,) = torch.autograd.grad(out.square().sum(), packed)
        results.append((out, grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, **FP32_TOLERANCE)


@pytest.mark.parametrize("kernels", ["triton", "torch"])
def test_rows_that_see_no_key_are_zero_with_zero_gradients(monkeypatch, kernels):
    q, k, v, key_mask = _inputs(3, 2, 6, 8, 16, empty_items=(1,))
    out, dq, dk, dv = _run(monkeypatch, kernels, q, k, v, key_mask, causal=True, prefix=0)
    assert all(torch.isfinite(t).all() for t in (out, dq, dk, dv))
    assert out[1].abs().max() == 0 and dq[1].abs().max() == 0 and dk[1].abs().max() == 0
    assert out[0].abs().max() > 0


CONFIGS = {
    "padding": dict(),
    "causal": dict(causal=True),
    "causal, prefix, see_self": dict(causal=True, prefix=3, see_self=True),
    "see_self": dict(see_self=True),
}


@pytest.mark.parametrize("options", CONFIGS.values(), ids=CONFIGS.keys())
def test_reference_matches_sdpa_with_the_equivalent_boolean_mask(options):
    q, k, v, key_mask = _inputs(3, 2, 7, 7, 16, empty_items=(2,))
    key_mask[0, :2] = False  # with causal, the first queries of item 0 see nothing
    visible = _expected_visibility(
        key_mask, 7, 7, options.get("causal", False), options.get("prefix", 0), options.get("see_self", False)
    )
    rows = visible.any(dim=-1)[:, 0]  # (B, Tq)
    assert (~rows).any() or options.get("see_self"), "the mask should leave some rows empty"
    got = masked_attention_reference(q, k, v, key_mask, **options)
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=visible)
    torch.testing.assert_close(got.transpose(1, 2)[rows], sdpa.transpose(1, 2)[rows], atol=1e-6, rtol=1e-6)
    assert (got.transpose(1, 2)[~rows] == 0).all()


def test_the_language_core_mask_gives_exactly_the_former_sdpa_result():
    """see_self with a (B, T) mask reproduces SDPA under ``key padding & causal-with-prefix | eye``, bit for bit."""
    q, k, v, key_mask = _inputs(3, 2, 9, 9, 16, empty_items=(1,))
    for causal, prefix in ((False, 0), (True, 0), (True, 4)):
        allowed = key_mask[:, None, None, :].expand(3, 1, 9, 9)
        if causal:
            lower = torch.ones(9, 9, dtype=torch.bool).tril()
            lower[:, :prefix] = True
            allowed = allowed & lower
        former = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed | torch.eye(9, dtype=torch.bool))
        now = masked_attention_reference(q, k, v, key_mask, causal=causal, prefix=prefix, see_self=True)
        assert torch.equal(now, former)


def test_probabilities_weigh_the_values_as_the_reference_does():
    q, k, v, key_mask = _inputs(2, 2, 6, 9, 8, empty_items=(1,))
    probs = attention_probabilities(q, k, key_mask, causal=True, prefix=2)
    torch.testing.assert_close(probs @ v, masked_attention_reference(q, k, v, key_mask, causal=True, prefix=2))
    sums = probs.sum(dim=-1)
    torch.testing.assert_close(sums[0], torch.ones_like(sums[0]))
    assert sums[1].abs().max() == 0


@pytest.mark.parametrize("kernels", ["triton", "torch"])
@pytest.mark.parametrize("self_attention", [False, True], ids=["cross", "self"])
def test_multihead_attention_matches_nn_multihead_attention(monkeypatch, kernels, self_attention):
    monkeypatch.setenv("MMODAL_KERNELS", kernels)
    torch.manual_seed(0)
    module = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    query = torch.randn(3, 5, 32)
    context = query if self_attention else torch.randn(3, 7, 32)
    key_mask = torch.rand(3, context.shape[1]) > 0.3
    key_mask[:, 0] = True
    for need_weights in (False, True):
        out, weights = multihead_attention(module, query, context, key_mask, need_weights=need_weights)
        want, want_weights = module(query, context, context, key_padding_mask=~key_mask, need_weights=need_weights)
        torch.testing.assert_close(out, want, **FP32_TOLERANCE)
        if need_weights:
            torch.testing.assert_close(weights, want_weights, **FP32_TOLERANCE)
        else:
            assert weights is None


def test_bad_inputs_get_clear_errors(monkeypatch):
    q, k, v, key_mask = _inputs(2, 2, 4, 5, 8)
    with pytest.raises(ValueError, match=r"k must be \(B=2, H=2, Tk, d=8\)"):
        masked_attention(q, k[:, :1], v[:, :1])
    with pytest.raises(ValueError, match="v must have k's shape"):
        masked_attention(q, k, v[:, :, :4])
    with pytest.raises(ValueError, match="key_mask must be bool"):
        masked_attention(q, k, v, key_mask=key_mask.long())
    with pytest.raises(ValueError, match=r"key_mask must be \(B=2, Tk=5\)"):
        masked_attention(q, k, v, key_mask=key_mask[:, :4])
    with pytest.raises(ValueError, match="must be \\(B, H, T, d\\)"):
        masked_attention(q[0], k, v)
    with pytest.raises(ValueError, match="prefix must be >= 0"):
        masked_attention(q, k, v, causal=True, prefix=-1)
    monkeypatch.setenv("MMODAL_KERNELS", "triton")
    wide = torch.zeros(1, 1, 2, MAX_HEAD_DIM + 8)
    with pytest.raises(ValueError, match=f"head dims 1..{MAX_HEAD_DIM}"):
        masked_attention(wide, wide, wide)
    monkeypatch.setenv("MMODAL_KERNELS", "torch")
    assert masked_attention(wide, wide, wide).shape == wide.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 / fp16 Triton kernels need CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_kernel_matches_the_fp32_reference(monkeypatch, dtype):
    q, k, v, key_mask = (
        t.cuda().detach().requires_grad_() if t.is_floating_point() else t.cuda()
        for t in _inputs(4, 2, 40, 64, 32, empty_items=(3,), dtype=dtype)
    )
    options = dict(causal=True, prefix=16, see_self=True)
    got = _run(monkeypatch, "triton", q, k, v, key_mask, **options)
    wide = [t.float().detach().requires_grad_() for t in (q, k, v)]
    want = _run(monkeypatch, "torch", *wide, key_mask, **options)
    for a, b in zip(got, want):
        assert a.dtype == dtype
        torch.testing.assert_close(a.float(), b, **HALF_TOLERANCE)


@pytest.mark.slow  # every kernel of the text tower runs in Triton's interpreter here: several seconds
def test_the_shipped_model_embeds_texts_alike_with_either_kernels(monkeypatch, model):
    texts = ["a red circle left of a blue square", "two green triangles"]
    embeddings = {}
    for kernels in ("torch", "triton"):
        monkeypatch.setenv("MMODAL_KERNELS", kernels)
        with torch.inference_mode():
            embeddings[kernels] = model.encode_text(texts)
    torch.testing.assert_close(embeddings["triton"], embeddings["torch"], atol=1e-4, rtol=1e-4)
