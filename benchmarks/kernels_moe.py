"""The routed experts of the language core (mmodal.kernels.moe.moe_experts): the Triton path (gating, permutation,
grouped matmuls, weighted un-permute) against the plain-torch reference (a loop over experts), eager and under
torch.compile, forward and forward + backward, on the GPU.

    python benchmarks/kernels_moe.py          # needs CUDA; prints JSON

Shapes: the shipped core (hidden 128, 4 experts of 192, top 2) over a batch of 256 queries × 24 tokens, and
large ones (hidden 1024, 8 and 64 experts). TFLOP/s counts the experts' products only: 2 · tokens · k ·
(H · 2F + F · H) forward, three times that with the backward pass.
"""

import json
import sys
from functools import partial

import torch
from gpu_timing import compare


def _routed(experts, inputs: tuple, top_k: int) -> torch.Tensor:
    return experts(*inputs, top_k)[0]


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU (the kernels' CPU tests run under Triton's interpreter instead)")

    import mmodal.kernels.moe as moe

    compiled = torch.compile(moe.moe_experts_reference)
    shapes = {
        "shipped core: 6144 tokens, H 128, 4 experts x 192, top 2": (6144, 128, 192, 4, 2),
        "large: 32768 tokens, H 1024, 8 experts x 2816, top 2": (32768, 1024, 2816, 8, 2),
        "many experts: 32768 tokens, H 1024, 64 experts x 704, top 6": (32768, 1024, 704, 64, 6),
    }
    report = {"device": torch.cuda.get_device_name(), "dtype": "bfloat16", "shapes": {}}
    for name, (n, h, f, e, k) in shapes.items():
        tokens = torch.randn(n, h, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        logits = torch.randn(n, e, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        w_gate_up = (torch.randn(e, h, 2 * f, device="cuda", dtype=torch.bfloat16) / h**0.5).requires_grad_()
        w_down = (torch.randn(e, f, h, device="cuda", dtype=torch.bfloat16) / f**0.5).requires_grad_()
        inputs = (tokens, logits, w_gate_up, w_down)
        flops = 2 * n * k * (h * 2 * f + f * h)
        runs = {
            "triton": partial(_routed, moe.moe_experts, inputs, k),
            "eager": partial(_routed, moe.moe_experts_reference, inputs, k),
            "compiled": partial(_routed, compiled, inputs, k),
        }
        grad = torch.randn(n, h, device="cuda", dtype=torch.bfloat16)
        row = compare(runs, grad, list(inputs), flops)
        report["shapes"][name] = row
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
