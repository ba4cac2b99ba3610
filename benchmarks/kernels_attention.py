"""Forward and forward + backward time of masked_attention's Triton kernels (mmodal.kernels.attention) against its
plain-torch reference, eager and under torch.compile, and against bare scaled_dot_product_attention.

    python benchmarks/kernels_attention.py --dtype bfloat16

Needs a CUDA GPU. The shapes are the model's own (early fusion over 500 candidate images for one query: text
tokens attending to image patches and back, the language core's padded self-attention, the answer decoder's
causal attention after a prefix) and a few large ones. Prints one JSON object: per shape and implementation the
median time (triton.testing.do_bench, ms, with 20/80% quantiles), the speed-up over the eager reference and the
achieved TFLOP/s. FLOPs count only the query-key pairs the mask lets through: 4 * d per pair forward (QK^T and
PV), 2.5 times that again backward (FlashAttention's convention), so masked-out work earns nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

# name: (B, H, Tq, Tk, d, padded fraction of keys, causal, prefix, see_self)
SHAPES = {
    "rerank text->image d32": (500, 4, 40, 64, 32, 0.0, False, 0, False),
    "rerank image->text d32": (500, 4, 64, 40, 32, 0.4, False, 0, False),
    "rerank text self d32": (500, 4, 40, 40, 32, 0.4, False, 0, True),
    "rerank text->image d64": (500, 4, 40, 64, 64, 0.0, False, 0, False),
    "rerank image->text d64": (500, 4, 64, 40, 64, 0.4, False, 0, False),
    "answer decoder, prefix 80": (500, 4, 96, 96, 32, 0.1, True, 80, True),
    "large padded 1k d64": (64, 8, 1024, 1024, 64, 0.25, False, 0, False),
    "large causal 2k d64": (16, 16, 2048, 2048, 64, 0.0, True, 0, False),
    "large cross 512x4k d128": (16, 8, 512, 4096, 128, 0.25, False, 0, False),
}


def _inputs(shape, dtype: torch.dtype, seed: int = 0):
    batch, heads, len_q, len_k, head_dim, padded, causal, prefix, see_self = shape
    generator = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v = (
        torch.randn(batch, heads, t, head_dim, device="cuda", generator=generator, dtype=dtype).requires_grad_()
        for t in (len_q, len_k, len_k)
    )
    key_mask = None
    if padded:
        # Padding at the end of each item, as tokenizers leave it: real lengths between (1 - 2 * padded) and 1.
        lengths = torch.randint(
            max(1, int(len_k * (1 - 2 * padded))), len_k + 1, (batch,), device="cuda", generator=generator
        )
        key_mask = torch.arange(len_k, device="cuda")[None, :] < lengths[:, None]
    return q, k, v, key_mask, dict(causal=causal, prefix=prefix, see_self=see_self)


def _implementations(key_mask, options, len_q: int, len_k: int):
    from mmodal.kernels.attention import masked_attention, masked_attention_reference, visible_keys

    def reference(q, k, v):
        return masked_attention_reference(q, k, v, key_mask, **options)

    # Bare SDPA gets its mask built once, outside the timed region, and no care for rows that see nothing.
    mask = visible_keys(key_mask, len_q, len_k, device="cuda", **options)
    if mask is not None:
        mask = mask.contiguous()
    compiled = torch.compile(reference)
    return {
        "triton": lambda q, k, v: masked_attention(q, k, v, key_mask, **options),
        "torch_eager": reference,
        "torch_compile": compiled,
        "sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
    }, mask


def _visible_pairs(mask, batch: int, len_q: int, len_k: int) -> int:
    if mask is None:
        return batch * len_q * len_k
    return int(mask.expand(batch, 1, len_q, len_k).sum())


def _time(fn, grads_of) -> dict[str, object]:
    import triton.testing

    median, low, high = triton.testing.do_bench(
        fn, warmup=25, rep=100, grad_to_none=grads_of, quantiles=[0.5, 0.2, 0.8]
    )
    return {"ms": median, "ms_20_80": [round(low, 4), round(high, 4)]}


def _bench_shape(shape, dtype: torch.dtype) -> dict[str, object]:
    from mmodal.kernels.attention import masked_attention_reference

    batch, heads, len_q, len_k, head_dim = shape[:5]
    q, k, v, key_mask, options = _inputs(shape, dtype)
    implementations, mask = _implementations(key_mask, options, len_q, len_k)
    flops_forward = 4 * heads * head_dim * _visible_pairs(mask, batch, len_q, len_k)
    result: dict[str, object] = {"B, H, Tq, Tk, d": shape[:5], **options, "padded": shape[5]}
    with torch.no_grad():
        kernel_out = implementations["triton"](q, k, v)
        fp32_out = masked_attention_reference(q.float(), k.float(), v.float(), key_mask, **options)
    result["max_abs_diff_vs_fp32_reference"] = (kernel_out.float() - fp32_out).abs().max().item()
    upstream = torch.randn_like(kernel_out)

    timings: dict[str, dict[str, dict]] = {}
    for impl, fn in implementations.items():

        def forward(fn=fn):
            return fn(q, k, v)

        def forward_backward(fn=fn):
            fn(q, k, v).backward(upstream)

        entry: dict[str, dict] = {}
        try:
            with torch.no_grad():
                entry["forward"] = _time(forward, None)
            entry["forward_backward"] = _time(forward_backward, [q, k, v])
        except torch.OutOfMemoryError:
            entry["error"] = {"what": "out of memory"}
        except Exception as error:  # a compile failure in one implementation should not hide the others
            entry["error"] = {"what": f"{type(error).__name__}: {str(error)[:200]}"}
        q.grad = k.grad = v.grad = None
        torch.cuda.empty_cache()
        timings[impl] = entry

    for entry in timings.values():
        for phase, flops in (("forward", flops_forward), ("forward_backward", 3.5 * flops_forward)):
            if phase not in entry:
                continue
            ms = entry[phase]["ms"]
            entry[phase]["tflops"] = round(flops / (ms * 1e-3) / 1e12, 2)
            eager = timings["torch_eager"].get(phase)
            if eager:
                entry[phase]["speedup_vs_eager"] = round(eager["ms"] / ms, 2)
    for entry in timings.values():
        for phase in ("forward", "forward_backward"):
            if phase in entry:
                entry[phase]["ms"] = round(entry[phase]["ms"], 4)
    result.update(timings)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES), metavar="NAME")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/kernels_attention.py needs a CUDA GPU: torch.cuda.is_available() is False here")

    os.environ["MMODAL_KERNELS"] = "triton"  # no silent fallback to the reference
    dtype = getattr(torch, args.dtype)
    report: dict[str, object] = {"device": torch.cuda.get_device_name(), "dtype": args.dtype, "shapes": {}}
    for name in args.shapes:
        report["shapes"][name] = _bench_shape(SHAPES[name], dtype)
        torch.cuda.empty_cache()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
