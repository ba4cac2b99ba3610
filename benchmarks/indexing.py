"""Indexing throughput: decode alone, the bare model forward alone, the real pipeline and a naive loop.

    python benchmarks/indexing.py --n 2000                   # generates the collection when missing
    python benchmarks/indexing.py --n 100000 --skip-naive    # peak memory at scale

Decoding and the forward pass share the same cores, so the best a pipeline can do is
1 / (1/decode + 1/forward); the report gives the pipeline's share of that bound. The pipeline is the
real `mmodal index` command, run as a user runs it; its peak memory is the largest process's RSS.
Heavy imports stay inside functions so that decoding workers start without them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from mmodal.data.decode import decode_files
from mmodal.data.images import walk_images


def _render_chunk(args: tuple[str, int, int]) -> None:
    from mmodal.shapes.render import render, sample_style
    from mmodal.shapes.world import sample_scene

    folder, start, stop = args
    for i in range(start, stop):
        rng = np.random.default_rng(1_000_000 + i)
        scene = sample_scene(rng, "test")
        image = render(scene, sample_style(scene, rng))
        name = Path(folder) / f"{i // 1000:04d}" / f"{i:07d}.{'jpg' if i % 2 else 'png'}"
        name.parent.mkdir(exist_ok=True)
        image.save(name, quality=90) if i % 2 else image.save(name)


def make_collection(folder: Path, n: int) -> None:
    if folder.is_dir() and sum(1 for _ in walk_images([folder])) >= n:
        return
    folder.mkdir(parents=True, exist_ok=True)
    chunks = [(str(folder), s, min(n, s + 500)) for s in range(0, n, 500)]
    with multiprocessing.get_context("forkserver").Pool(os.cpu_count()) as pool:
        pool.map(_render_chunk, chunks)


def decode_rate(paths: list[str], image_size: int) -> float:
    from mmodal.pipeline import FILES_PER_TASK

    chunks = [paths[i : i + FILES_PER_TASK] for i in range(0, len(paths), FILES_PER_TASK)]
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(os.cpu_count(), mp_context=context) as pool:
        list(pool.map(decode_files, chunks[:2], [image_size] * 2))  # start the workers before timing
        start = time.perf_counter()
        decoded = sum(len(r) for r in pool.map(decode_files, chunks, [image_size] * len(chunks)))
        return decoded / (time.perf_counter() - start)


def forward_rate(model, n: int, batch_size: int) -> float:
    import torch

    from encoders.image import normalize_pixels

    size = model.config.image.image_size
    batch = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8)
    model.encode_image(normalize_pixels(batch))
    start = time.perf_counter()
    for _ in range(max(1, n // batch_size)):
        model.encode_image(normalize_pixels(batch))
    return max(1, n // batch_size) * batch_size / (time.perf_counter() - start)


def naive_rate(model, paths: list[str]) -> float:
    from PIL import Image

    start = time.perf_counter()
    for path in paths:
        with Image.open(path) as image:
            model.encode_image([image])
    return len(paths) / (time.perf_counter() - start)


def pipeline(collection: Path, model: str, batch_size: int) -> tuple[dict, float]:
    """Runs `mmodal index` on a fresh index; returns its summary and the largest process's peak RSS (MiB)."""
    index_dir = Path(tempfile.mkdtemp(prefix="mmodal-bench-index-"))
    command = [str(Path(sys.executable).with_name("mmodal")), "index", str(collection), "--index", str(index_dir)]
    command += ["--model", model, "--batch-size", str(batch_size), "--json"]
    try:
        done = subprocess.run(command, check=True, capture_output=True, text=True)
    finally:
        shutil.rmtree(index_dir, ignore_errors=True)
    return json.loads(done.stdout), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="images in the collection")
    parser.add_argument("--collection", default=None, help="folder of images (default: data/bench-N)")
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--naive", type=int, default=300, help="images for the naive loop")
    parser.add_argument("--skip-naive", action="store_true")
    args = parser.parse_args()

    collection = Path(args.collection or f"data/bench-{args.n}")
    make_collection(collection, args.n)
    paths = list(walk_images([collection]))[: args.n]
    summary, peak_mib = pipeline(collection, args.model, args.batch_size)

    import torch

    from mmodal.model import MModalModel

    model = MModalModel.from_pretrained(args.model)
    size = model.config.image.image_size
    report = {"images": len(paths), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    report["decode_images_per_s"] = decode_rate(paths, size)
    report["forward_images_per_s"] = forward_rate(model, min(len(paths), 4096), args.batch_size)
    report["bound_images_per_s"] = 1 / (1 / report["decode_images_per_s"] + 1 / report["forward_images_per_s"])
    report["pipeline_images_per_s"] = summary["indexed"] / summary["seconds"]
    report["pipeline_share_of_bound"] = report["pipeline_images_per_s"] / report["bound_images_per_s"]
    report["pipeline_peak_rss_mib"] = peak_mib
    if not args.skip_naive:
        report["naive_images_per_s"] = naive_rate(model, paths[: args.naive])
        report["pipeline_over_naive"] = report["pipeline_images_per_s"] / report["naive_images_per_s"]
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in report.items()}, indent=2))


if __name__ == "__main__":
    main()
