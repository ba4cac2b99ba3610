"""Forward + backward time and peak memory of the fused contrastive loss (mmodal.kernels.contrastive) against its
plain-torch reference, eager and under torch.compile, on CLIP-sized bf16 batches.

    python benchmarks/kernels_contrastive.py --sizes 4096 32768 --dim 256

Needs a CUDA GPU. Positives come from random scene labels (several captions per scene, as in training
batches) as an (N, N) bool matrix; ``--diagonal`` benchmarks plain CLIP InfoNCE (positives=None) instead.
Prints one JSON object: for each size and implementation the time of one forward + backward
(triton.testing.do_bench, median and 20/80% quantiles in ms), and at the largest size the peak memory each
allocates beyond its inputs (torch.cuda.max_memory_allocated).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch


def _inputs(n: int, dim: int, diagonal: bool, seed: int = 0):
    generator = torch.Generator(device="cuda").manual_seed(seed)
    rows = torch.nn.functional.normalize(torch.randn(n, dim, device="cuda", generator=generator), dim=1)
    cols = torch.nn.functional.normalize(rows + 0.5 * torch.randn(n, dim, device="cuda", generator=generator), dim=1)
    rows = rows.to(torch.bfloat16).requires_grad_()
    cols = cols.to(torch.bfloat16).requires_grad_()
    scale = torch.tensor(14.0, device="cuda", requires_grad=True)
    positives = None
    if not diagonal:
        labels = torch.randint(0, max(1, 3 * n // 4), (n,), device="cuda", generator=generator)
        positives = labels[:, None] == labels[None, :]
    return rows, cols, scale, positives


def _implementations(hard_negatives: int):
    from mmodal.kernels.contrastive import contrastive_loss, contrastive_loss_reference

    def reference(rows, cols, scale, positives):
        return contrastive_loss_reference(rows, cols, scale, positives).loss

    implementations = {
        "triton": lambda r, c, s, p: contrastive_loss(r, c, s, p).loss,
        "torch_eager": reference,
        "torch_compile": torch.compile(reference),
    }
    if hard_negatives:
        implementations[f"triton_hard{hard_negatives}"] = lambda r, c, s, p: (
            contrastive_loss(r, c, s, p, hard_negatives).loss
        )
    return implementations


def _step(loss_fn, rows, cols, scale, positives):
    def run():
        loss_fn(rows, cols, scale, positives).backward()

    return run


def _peak_bytes(run) -> int:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - baseline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 32768], help="batch sizes N (R = C = N)")
    parser.add_argument("--dim", type=int, default=256, help="embedding width D")
    parser.add_argument("--diagonal", action="store_true", help="positives=None (plain CLIP InfoNCE)")
    parser.add_argument("--hard-negatives", type=int, default=16, help="also time the kernel returning k of them")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/kernels_contrastive.py needs a CUDA GPU: torch.cuda.is_available() is False here")
    import triton.testing

    os.environ["MMODAL_KERNELS"] = "triton"  # no silent fallback to the reference
    implementations = _implementations(args.hard_negatives)
    report = {
        "device": torch.cuda.get_device_name(),
        "dim": args.dim,
        "dtype": "bfloat16",
        "positives": "diagonal" if args.diagonal else "bool matrix from scene labels",
        "sizes": {},
    }
    for n in args.sizes:
        rows, cols, scale, positives = _inputs(n, args.dim, args.diagonal)
        result: dict[str, object] = {}
        with torch.no_grad():
            kernel_loss = implementations["triton"](rows, cols, scale, positives)
            fp32_loss = implementations["torch_eager"](rows.float(), cols.float(), scale, positives)
        result["loss_abs_diff_vs_fp32_reference"] = abs(kernel_loss.item() - fp32_loss.item())
        for name, loss_fn in implementations.items():
            run = _step(loss_fn, rows, cols, scale, positives)
            try:
                median, low, high = triton.testing.do_bench(
                    run, warmup=25, rep=200, grad_to_none=[rows, cols, scale], quantiles=[0.5, 0.2, 0.8]
                )
                entry: dict[str, object] = {"ms": round(median, 3), "ms_20_80": [round(low, 3), round(high, 3)]}
                if n == max(args.sizes):
                    rows.grad = cols.grad = scale.grad = None
                    entry["peak_mib_beyond_inputs"] = round(_peak_bytes(run) / 2**20, 1)
            except torch.OutOfMemoryError:
                entry = {"error": "out of memory"}
            rows.grad = cols.grad = scale.grad = None
            torch.cuda.empty_cache()
            result[name] = entry
        report["sizes"][str(n)] = result
        del rows, cols, scale, positives
        torch.cuda.empty_cache()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
