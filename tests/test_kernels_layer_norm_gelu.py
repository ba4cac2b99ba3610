"""The fused LayerNorm → Linear → GELU kernel against its torch reference: outputs and every gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mmodal.kernels.dispatch import KernelUnavailableError, use_triton
from mmodal.kernels.layer_norm_gelu import layer_norm_linear_gelu, layer_norm_linear_gelu_reference

TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _layers(k: int, n: int, dtype, device) -> tuple[nn.LayerNorm, nn.Linear]:
    torch.manual_seed(k * 31 + n)
    norm, linear = nn.LayerNorm(k), nn.Linear(k, n)
    with torch.no_grad():  # parameters away from their defaults, so their gradients are tested for real
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_(0, 0.2)
    return norm.to(device, dtype), linear.to(device, dtype)


def _run(x, norm, linear, choice: str, monkeypatch):
    monkeypatch.setenv("MMODAL_KERNELS", choice)
    x = x.detach().clone().requires_grad_()
    for p in (*norm.parameters(), *linear.parameters()):
        p.grad = None
    out = layer_norm_linear_gelu(x, norm, linear)
    (out.float() * torch.linspace(-1, 1, out.shape[-1], device=out.device)).sum().backward()
    grads = [x.grad, norm.weight.grad, norm.bias.grad, linear.weight.grad, linear.bias.grad]
    return out.detach(), [g.detach().clone() for g in grads]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "shape, n",
    [((1, 8), 16), ((7, 24), 40), ((2, 5, 33), 17), ((3, 70), 96)],
    ids=["one-row", "odd-rows", "batched-non-power-of-two", "wider-than-a-block"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_kernel_matches_the_reference_forward_and_backward(shape, n, dtype, device, monkeypatch):
    if dtype != torch.float32 and device == "cpu":
        pytest.skip("half precision is checked on the GPU")
    norm, linear = _layers(shape[-1], n, dtype, device)
    x = (torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 3 + 1).to(device, dtype)
    fused, fused_grads = _run(x, norm, linear, "triton", monkeypatch)
    reference, reference_grads = _run(x, norm, linear, "torch", monkeypatch)
    assert fused.shape == (*shape[:-1], n)
    tolerance = TOLERANCE[dtype]
    torch.testing.assert_close(fused.float(), reference.float(), rtol=tolerance, atol=tolerance)
    for name, a, b in zip(["x", "norm weight", "norm bias", "weight", "bias"], fused_grads, reference_grads):
        scale = b.float().abs().max().clamp_min(1)
        torch.testing.assert_close(a.float() / scale, b.float() / scale, rtol=tolerance, atol=tolerance, msg=name)


def test_reference_is_the_modules_composed():
    norm, linear = _layers(12, 20, torch.float32, "cpu")
    x = torch.randn(4, 12)
    composed = nn.GELU()(linear(norm(x)))
    fused = layer_norm_linear_gelu_reference(x, norm.weight, norm.bias, linear.weight, linear.bias, norm.eps)
    torch.testing.assert_close(fused, composed)


def test_launcher_refuses_mismatched_shapes_and_dtypes(monkeypatch):
    monkeypatch.setenv("MMODAL_KERNELS", "triton")
    norm, linear = _layers(8, 16, torch.float32, "cpu")
    with pytest.raises(ValueError, match="weight must be"):
        layer_norm_linear_gelu(torch.randn(3, 9), nn.LayerNorm(9), linear)
    with pytest.raises(ValueError, match="share one of"):
        layer_norm_linear_gelu(torch.randn(3, 8, dtype=torch.float64), norm, linear)


def test_dispatcher_follows_the_environment(monkeypatch):
    cpu = torch.zeros(1)
    monkeypatch.setenv("MMODAL_KERNELS", "auto")
    assert not use_triton(cpu)  # CPU tensors take the reference unless Triton is forced
    monkeypatch.setenv("MMODAL_KERNELS", "torch")
    assert not use_triton(cpu)
    monkeypatch.setenv("MMODAL_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(KernelUnavailableError, match="TRITON_INTERPRET=1"):
        use_triton(cpu)
    monkeypatch.setenv("MMODAL_KERNELS", "fast")
    with pytest.raises(ValueError, match="use one of"):
        use_triton(cpu)


def test_shipped_model_embeds_images_alike_with_and_without_the_kernel(monkeypatch):
    from mmodal.model import MModalModel
    from mmodal.shapes.render import render, sample_style
    from mmodal.shapes.world import sample_scene

    model = MModalModel.from_pretrained("shapes")
    rng = np.random.default_rng(3)
    scenes = [sample_scene(rng, "test") for _ in range(2)]
    images = [render(s, sample_style(s, rng)) for s in scenes]
    embedded = {}
    for choice in ("torch", "triton"):
        monkeypatch.setenv("MMODAL_KERNELS", choice)
        with torch.inference_mode():
            embedded[choice] = model.encode_image(images)
    torch.testing.assert_close(embedded["triton"], embedded["torch"], rtol=1e-4, atol=1e-4)
