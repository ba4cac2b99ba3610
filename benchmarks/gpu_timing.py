"""Timing shared by the GPU kernel benchmarks: forward and forward + backward of each implementation of an op
(triton.testing.do_bench medians), their TFLOP/s and the kernel's speed-up over torch eager."""

import torch


def compare(runs: dict, grad: torch.Tensor, leaves: list, forward_flops: float) -> dict:
    """``runs`` maps "triton", "eager" and "compiled" to callables returning the op's output; the backward pass
    counts twice the forward's FLOPs."""
    import triton.testing

    row = {}
    for label, run in runs.items():
        forward = triton.testing.do_bench(run)
        both = triton.testing.do_bench(lambda run=run: run().backward(grad), grad_to_none=leaves)
        row[label] = {
            "forward_ms": round(forward, 4),
            "forward_backward_ms": round(both, 4),
            "forward_tflops": round(forward_flops / forward / 1e9, 2),
            "forward_backward_tflops": round(3 * forward_flops / both / 1e9, 2),
        }
    row["speed_up_over_eager"] = {
        "forward": round(row["eager"]["forward_ms"] / row["triton"]["forward_ms"], 2),
        "forward_backward": round(row["eager"]["forward_backward_ms"] / row["triton"]["forward_backward_ms"], 2),
    }
    return row
