"""The fused LayerNorm → Linear → GELU kernel against torch eager and torch.compile of the reference, on the GPU.

    python benchmarks/kernels_layer_norm_gelu.py        # needs CUDA; prints JSON

Shapes: the slot pooler's head (256 → 256 over a batch of images) and the modal-attention MLP's first half
(width → 4 × width over candidates × tokens), then large ones. Forward and forward + backward, bf16, timed with
triton.testing.do_bench; achieved TFLOP/s counts the matrix product only (2·M·N·K, three times that with the
backward pass).
"""

import json
import sys
from functools import partial

import torch
from gpu_timing import compare
from torch import nn


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU (the kernel's CPU tests run under Triton's interpreter instead)")

    from mmodal.kernels.layer_norm_gelu import LayerNormLinearGELUFunction, layer_norm_linear_gelu_reference

    compiled = torch.compile(layer_norm_linear_gelu_reference)
    shapes = {
        "slot pooler head (4096 images)": (4096, 256, 256),
        "modal-attention MLP (500 candidates x 64 tokens, width 256)": (32000, 256, 1024),
        "large (65536 x 1024 -> 4096)": (65536, 1024, 4096),
    }
    report = {"device": torch.cuda.get_device_name(), "dtype": "bfloat16", "shapes": {}}
    for name, (m, k, n) in shapes.items():
        norm, linear = nn.LayerNorm(k).cuda().bfloat16(), nn.Linear(k, n).cuda().bfloat16()
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        params = (norm.weight, norm.bias, linear.weight, linear.bias)
        runs = {
            "triton": partial(LayerNormLinearGELUFunction.apply, x, *params, norm.eps),
            "eager": partial(layer_norm_linear_gelu_reference, x, *params, norm.eps),
            "compiled": partial(compiled, x, *params, norm.eps),
        }
        grad = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
        row = compare(runs, grad, [x, *params], 2 * m * n * k)
        report["shapes"][name] = row
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
