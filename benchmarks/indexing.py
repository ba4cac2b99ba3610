"""Indexing throughput: decode alone, the bare model forward alone, the real pipeline and a naive loop.

    python benchmarks/indexing.py --n 2000                   # generates the collection when missing
    python benchmarks/indexing.py --n 100000 --skip-naive    # peak memory at scale

Decoding and the forward pass share the same cores, so the best a pipeline can do is
1 / (1/decode + 1/forward); the report gives the pipeline's share of that bound. The pipeline is the
real `mmodal index` command, run as a user runs it; its peak memory is the largest sum of the resident
memory of the indexer and its worker processes, sampled every 0.2 s.
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
import threading
import time
from pathlib import Path

import numpy as np

from mmodal.data.decode import decode_files
from mmodal.data.images import walk_images
from mmodal.workers import worker_pool


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
    with worker_pool(os.cpu_count() or 1, ["mmodal.data.decode"]) as pool:
        list(pool.map(decode_files, chunks[:2], [image_size] * 2))  # start the workers before timing
        start = time.perf_counter()
        decoded = sum(len(r) for r in pool.map(decode_files, chunks, [image_size] * len(chunks)))
        return decoded / (time.perf_counter() - start)


def forward_rate(model, n: int, batch_size: int) -> float:
    import torch

    size = model.input_size
    batch = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8)
    frames = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(batch_size, -1)
    model.encode_pixels(batch, frames)
    start = time.perf_counter()
    for _ in range(max(1, n // batch_size)):
        model.encode_pixels(batch, frames)
    return max(1, n // batch_size) * batch_size / (time.perf_counter() - start)


def naive_rate(model, paths: list[str]) -> float:
    from PIL import Image

    start = time.perf_counter()
    for path in paths:
        with Image.open(path) as image:
            model.encode_image([image])
    return len(paths) / (time.perf_counter() - start)


def tree_rss_mib(root: int) -> float:
    """Resident memory of a process and all its descendants, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry.name))
            rss[int(entry.name)] = int(fields[21]) * resource.getpagesize()
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total / 2**20


def pipeline(collection: Path, model: str, batch_size: int) -> tuple[dict, float]:
    """Runs `mmodal index` on a fresh index; returns its summary and the peak RSS of its process tree (MiB)."""
    index_dir = Path(tempfile.mkdtemp(prefix="mmodal-bench-index-"))
    command = [str(Path(sys.executable).with_name("mmodal")), "index", str(collection), "--index", str(index_dir)]
    command += ["--model", model, "--batch-size", str(batch_size), "--json"]
    peak = 0.0
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        output: list[str] = []
        reader = threading.Thread(target=lambda: output.append(process.stdout.read()))
        reader.start()
        while process.poll() is None:
            peak = max(peak, tree_rss_mib(process.pid))
            time.sleep(0.2)
        reader.join()
        if process.returncode:
            raise subprocess.CalledProcessError(process.returncode, command)
    finally:
        shutil.rmtree(index_dir, ignore_errors=True)
    return json.loads("".join(output)), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="images in the collection")
    parser.add_argument("--collection", default=None, help="folder of images (default: data/bench-N)")
    parser.add_argument("--model", default="shapes", help="any --model name of `mmodal index` (photos, clip:PATH, …)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--naive", type=int, default=300, help="images for the naive loop")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="measure decode, forward and pipeline this often")
    args = parser.parse_args()

    collection = Path(args.collection or f"data/bench-{args.n}")
    make_collection(collection, args.n)
    paths = list(walk_images([collection]))[: args.n]

    import torch

    from mmodal.loading import load_model

    model = load_model(args.model)
    size = model.input_size
    report = {"images": len(paths), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    # The machine's speed drifts: each repeat measures the three parts back to back, and the report gives
    # the median of each figure and of the per-repeat share of the bound.
    runs = []
    for _ in range(args.repeats):
        decode = decode_rate(paths, size)
        forward = forward_rate(model, min(len(paths), 4096), args.batch_size)
        # After the decode run, so the pipeline too reads the files from a warm page cache.
        summary, peak_mib = pipeline(collection, args.model, args.batch_size)
        bound = 1 / (1 / decode + 1 / forward)
        rate = summary["indexed"] / summary["seconds"]
        runs.append((decode, forward, bound, rate, rate / bound, peak_mib))
    medians = np.median(np.array(runs), axis=0)
    names = ("decode", "forward", "bound", "pipeline")
    report.update({f"{name}_images_per_s": float(value) for name, value in zip(names, medians)})
    report["pipeline_share_of_bound"] = float(medians[4])
    report["pipeline_share_of_bound_per_repeat"] = [round(r[4], 3) for r in runs]
    report["pipeline_peak_tree_rss_mib"] = max(r[5] for r in runs)
    if not args.skip_naive:
        report["naive_images_per_s"] = naive_rate(model, paths[: args.naive])
        report["pipeline_over_naive"] = report["pipeline_images_per_s"] / report["naive_images_per_s"]
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in report.items()}, indent=2))


if __name__ == "__main__":
    main()
