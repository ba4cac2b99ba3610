"""The fused contrastive loss: the Triton kernels (under Triton's interpreter on CPU) against the plain-torch
reference, and the reference against the symmetric InfoNCE formula written out."""

from __future__ import annotations

import pytest
import torch

from mmodal.kernels.contrastive import MAX_HARD_NEGATIVES, contrastive_loss

# fp32 kernels use IEEE products and fp32 logsumexps: they differ from torch only by summation order.
FP32_TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}
# bf16/fp16 inputs round the products' operands, and the gradient's dS tile is rounded to the input dtype.
HALF_TOLERANCE = {"rtol": 3e-2, "atol": 3e-2}


def _inputs(n_rows, n_cols, dim, seed, dtype=torch.float32, device="cpu"):
    generator = torch.Generator().manual_seed(seed)
    rows = torch.nn.functional.normalize(torch.randn(n_rows, dim, generator=generator), dim=1)
    cols = torch.nn.functional.normalize(torch.randn(n_cols, dim, generator=generator), dim=1)
    return rows.to(device, dtype), cols.to(device, dtype), torch.tensor(7.5, device=device)


def _random_positives(n_rows, n_cols, seed, density=0.15):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n_rows, n_cols, generator=generator) < density


def _run(monkeypatch, mode, rows, cols, scale, positives=None, hard_negatives=0):
    """(loss, grad rows, grad cols, grad scale, hard negatives) with MMODAL_KERNELS=mode."""
    monkeypatch.setenv("MMODAL_KERNELS", mode)
    rows, cols, scale = (t.detach().clone().requires_grad_() for t in (rows, cols, scale))
    out = contrastive_loss(rows, cols, scale, positives, hard_negatives)
    if out.loss.requires_grad:
        out.loss.backward()
    # The reference's loss is a constant when nothing is positive; its gradients are zero then.
    grads = [t.grad if t.grad is not None else torch.zeros_like(t) for t in (rows, cols, scale)]
    return out.loss.detach(), *grads, out.hard_negatives


def _assert_matches_reference(monkeypatch, rows, cols, scale, positives=None, tolerance=FP32_TOLERANCE):
    kernel = _run(monkeypatch, "triton", rows, cols, scale, positives)
    reference = _run(monkeypatch, "torch", rows, cols, scale, positives)
    for name, got, want in zip(("loss", "grad rows", "grad cols", "grad scale"), kernel[:4], reference[:4]):
        torch.testing.assert_close(got.float(), want.float(), **tolerance, msg=lambda m, n=name: f"{n}: {m}")
    return kernel


def _several_positives_with_empty_rows_and_cols(n_rows, n_cols, seed):
    positives = _random_positives(n_rows, n_cols, seed, density=0.2)
    positives[0, :3] = True  # a row with several positives
    if n_rows > 1:
        positives[-1] = False  # a row without any
    positives[:, 2] = False  # a column without any
    return positives


@pytest.mark.parametrize(
    ("n_rows", "n_cols", "dim"),
    [
        (37, 21, 19),  # R != C, both odd, D neither a power of two nor a multiple of the block
        (18, 20, 40),  # more columns than rows, D spanning three blocks
        (1, 17, 5),  # a single row
    ],
)
def test_kernel_matches_reference_with_several_positives(monkeypatch, n_rows, n_cols, dim):
    rows, cols, scale = _inputs(n_rows, n_cols, dim, seed=n_rows)
    positives = _several_positives_with_empty_rows_and_cols(n_rows, n_cols, seed=n_cols)
    _assert_matches_reference(monkeypatch, rows, cols, scale, positives)


def test_kernel_matches_reference_on_the_diagonal_by_default(monkeypatch):
    rows, cols, scale = _inputs(23, 23, 12, seed=3)
    _assert_matches_reference(monkeypatch, rows, cols, scale)


def test_kernel_reads_positives_and_inputs_through_their_strides(monkeypatch):
    rows, cols, scale = _inputs(40, 19, 24, seed=4)
    rows = rows[::2, :]  # every other row: a view with a row stride of 2 * D
    cols = cols.t().contiguous().t()  # column-major
    positives = _several_positives_with_empty_rows_and_cols(19, 20, seed=5).t()  # a transposed view
    assert not positives.is_contiguous() and not cols.is_contiguous()
    _assert_matches_reference(monkeypatch, rows, cols, scale, positives)


def test_without_any_positive_the_loss_and_its_gradients_are_zero(monkeypatch):
    rows, cols, scale = _inputs(9, 14, 8, seed=6)
    loss, grad_rows, grad_cols, grad_scale, _ = _assert_matches_reference(
        monkeypatch, rows, cols, scale, torch.zeros(9, 14, dtype=torch.bool)
    )
    assert loss.item() == 0.0
    assert not grad_rows.any() and not grad_cols.any() and grad_scale.item() == 0.0


def test_gradients_flow_only_where_asked(monkeypatch):
    """The speech recipe's case: a fixed scale and fixed text embeddings."""
    rows, cols, scale = _inputs(17, 17, 10, seed=7)
    positives = _random_positives(17, 17, seed=8) | torch.eye(17, dtype=torch.bool)
    grads = {}
    for mode in ("triton", "torch"):
        monkeypatch.setenv("MMODAL_KERNELS", mode)
        leaf = rows.clone().requires_grad_()
        contrastive_loss(leaf, cols, scale, positives).loss.backward()
        grads[mode] = leaf.grad
    torch.testing.assert_close(grads["triton"], grads["torch"], **FP32_TOLERANCE)


@pytest.mark.parametrize("hard_negatives", [3, MAX_HARD_NEGATIVES])
def test_hard_negatives_are_the_references_top_values_and_never_positives(monkeypatch, hard_negatives):
    n_rows, n_cols = 21, 19
    rows, cols, scale = _inputs(n_rows, n_cols, 9, seed=9)
    positives = _several_positives_with_empty_rows_and_cols(n_rows, n_cols, seed=10)
    positives[4, : n_cols - 2] = True  # two negatives only: fewer than k when k = 16
    kernel = _run(monkeypatch, "triton", rows, cols, scale, positives, hard_negatives)[4]
    reference = _run(monkeypatch, "torch", rows, cols, scale, positives, hard_negatives)[4]
    assert kernel.shape == reference.shape == (n_rows, hard_negatives) and kernel.dtype == torch.long
    torch.testing.assert_close(kernel == -1, reference == -1)  # the same slots left empty
    found = kernel >= 0
    assert not positives.gather(1, kernel.clamp(min=0))[found].any()
    logits = scale * rows @ cols.t()
    values = logits.gather(1, kernel.clamp(min=0)).masked_fill(~found, float("-inf"))
    reference_values = logits.gather(1, reference.clamp(min=0)).masked_fill(reference == -1, float("-inf"))
    torch.testing.assert_close(values, reference_values, **FP32_TOLERANCE)  # ties may come in another order
    if hard_negatives == MAX_HARD_NEGATIVES:
        assert found[4].sum() == 2


@pytest.mark.parametrize("mode", ["triton", "torch"])
def test_batch_loss_is_the_symmetric_multi_positive_infonce(monkeypatch, mode):
    """Positives as a training batch makes them (captions of the same scene): the loss is the mean over
    images of -log(softmax mass on its captions) and over captions of -log(mass on its images), averaged."""
    scene_of_caption = torch.tensor([0, 1, 1, 2, 3, 3, 3, 4, 5, 6, 6, 7])
    scene_of_image = torch.tensor([0, 1, 2, 3, 4, 5, 6, 8, 8, 1, 3])  # the last images repeat scenes; 8 has none
    positives = scene_of_image[:, None] == scene_of_caption[None, :]
    rows, cols, scale = _inputs(len(scene_of_image), len(scene_of_caption), 16, seed=11)

    def one_way(logits, positives):
        log_probs = logits.log_softmax(dim=1)
        positive_mass = torch.logsumexp(log_probs.masked_fill(~positives, float("-inf")), dim=1)
        return -positive_mass[positives.any(dim=1)].mean()

    logits = scale * rows.double() @ cols.double().t()
    expected = 0.5 * (one_way(logits, positives) + one_way(logits.t(), positives.t()))
    loss = _run(monkeypatch, mode, rows, cols, scale, positives)[0]
    torch.testing.assert_close(loss.double(), expected, **FP32_TOLERANCE)


@pytest.mark.parametrize("mode", ["triton", "torch"])
@pytest.mark.parametrize(
    ("n_rows", "n_cols", "dim", "positives", "hard_negatives", "message"),
    [
        (4, 5, 3, None, 0, "needs R == C"),
        (4, 4, 3, torch.ones(4, 4), 0, "bool tensor"),
        (4, 4, 3, torch.ones(4, 3, dtype=torch.bool), 0, r"\(4, 4\) bool"),
        (4, 4, 3, None, 5, "hard_negatives must be in 0..4"),
        (20, 20, 3, None, MAX_HARD_NEGATIVES + 1, "hard_negatives must be in 0..16"),
    ],
)
def test_bad_arguments_are_refused_clearly(monkeypatch, mode, n_rows, n_cols, dim, positives, hard_negatives, message):
    monkeypatch.setenv("MMODAL_KERNELS", mode)
    rows, cols, scale = _inputs(n_rows, n_cols, dim, seed=0)
    with pytest.raises(ValueError, match=message):
        contrastive_loss(rows, cols, scale, positives, hard_negatives)


@pytest.mark.parametrize("mode", ["triton", "torch"])
def test_mismatched_widths_and_scale_shapes_are_refused(monkeypatch, mode):
    monkeypatch.setenv("MMODAL_KERNELS", mode)
    rows, cols, scale = _inputs(4, 4, 3, seed=0)
    with pytest.raises(ValueError, match="must share D"):
        contrastive_loss(rows, cols[:, :2], scale)
    with pytest.raises(ValueError, match="0-d floating-point tensor"):
        contrastive_loss(rows, cols, scale.reshape(1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16/fp16 kernels need a GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_kernel_matches_fp32_reference(monkeypatch, dtype):
    rows, cols, scale = _inputs(300, 257, 96, seed=12, dtype=dtype, device="cuda")
    positives = _several_positives_with_empty_rows_and_cols(300, 257, seed=13).cuda()
    kernel = _run(monkeypatch, "triton", rows, cols, scale, positives)
    reference = _run(monkeypatch, "torch", rows.float(), cols.float(), scale, positives)
    for got, want in zip(kernel[:4], reference[:4]):
        torch.testing.assert_close(got.float(), want.float(), **HALF_TOLERANCE)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="autocast to bf16 is for the GPU path")
def test_under_autocast_the_kernel_takes_autocasts_dtype(monkeypatch):
    rows, cols, scale = _inputs(128, 128, 64, seed=14, device="cuda")
    monkeypatch.setenv("MMODAL_KERNELS", "triton")
    leaf = rows.clone().requires_grad_()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = contrastive_loss(leaf, cols, scale).loss
    loss.backward()
    assert leaf.grad.dtype == torch.float32
    reference = _run(monkeypatch, "torch", rows, cols, scale)
    torch.testing.assert_close(loss.float(), reference[0], **HALF_TOLERANCE)
