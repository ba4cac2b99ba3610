"""Indexing's decode and encode stages as a Ray Data pipeline, for collections that need more than one machine.

    read (the changed files, in the local pipeline's order) → decode (tasks) → encode (an actor pool, one model
    per actor, a GPU each when the cluster has them) → embedding shards (Parquet, beside the index)

The shards are then read back in file order and written to the index by the same code as local indexing, so a
folder indexed either way gets the same item ids and, within floating-point tolerance, the same vectors.
``ray.init`` joins the cluster at ``address`` or, without one, starts Ray on this machine.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mmodal.data.decode import DecodedFile, SkippedFile, decode_files
from mmodal.indexes.metadata import NewItem, present_slots

log = logging.getLogger(__name__)

SHARDS_FOLDER = ".ray-shards"
FILES_PER_DECODE_TASK = 64


class RayUnavailableError(ModuleNotFoundError):
    """Ray is an optional extra."""


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as error:
        raise RayUnavailableError(
            "--engine ray needs Ray Data: pip install 'mmodal[scale]' (or use the default local engine)"
        ) from error
    return ray


def decode_batch(batch: dict[str, np.ndarray], image_size: int) -> dict[str, np.ndarray]:
    """Ray Data stage: one batch of paths → the decoder's results as columns (a skipped file has a reason)."""
    results = decode_files([str(p) for p in batch["path"]], image_size)
    n = len(results)
    decoded = [r if isinstance(r, DecodedFile) else None for r in results]
    pixels = np.zeros((n, 3, image_size, image_size), np.uint8)
    for i, d in enumerate(decoded):
        if d is not None:
            pixels[i] = d.pixels
    return {
        "order": np.asarray(batch["order"], np.int64),
        "path": np.array([r.path for r in results], dtype=object),
        "content_hash": np.array([d.content_hash if d else "" for d in decoded], dtype=object),
        "size": np.array([r.size for r in results], np.int64),
        "mtime_ns": np.array([r.mtime_ns for r in results], np.int64),
        "width": np.array([d.width if d else 0 for d in decoded], np.int64),
        "height": np.array([d.height if d else 0 for d in decoded], np.int64),
        "format": np.array([(d.format or "") if d else "" for d in decoded], dtype=object),
        "reason": np.array(["" if d else r.reason for d, r in zip(decoded, results)], dtype=object),
        "pixels": pixels,
    }


class EncoderActor:
    """Ray Data stage: holds one model (on this actor's GPU when it has one) and encodes decoded pixels."""

    def __init__(self, model_name: str):
        import torch

        from mmodal.loading import load_model

        torch.set_num_threads(1)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = load_model(model_name, device=self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from mmodal.encoders.pixels import letterbox_frame

        n = len(batch["path"])
        ok = batch["reason"] == ""
        identity = self.model.identity
        vectors = np.zeros((n, identity.dim), np.float32)
        slots = np.zeros((n, 1, max(identity.slot_dim, 1)), np.float32)
        if ok.any():
            pixels = torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok]))
            frames = torch.tensor(
                [letterbox_frame(int(w), int(h)) for w, h in zip(batch["width"][ok], batch["height"][ok])]
            )
            with torch.inference_mode():
                encoded, encoded_slots = self.model.encode_pixels(pixels, frames)
            vectors[ok] = encoded
            if encoded_slots is not None:
                slots = np.zeros((n, *encoded_slots.shape[1:]), np.float32)
                slots[ok] = encoded_slots
        out = {k: v for k, v in batch.items() if k != "pixels"}
        out["vector"], out["slots"] = vectors, slots
        return out


def encode_with_ray(
    model_name: str,
    paths: list[str],
    image_size: int,
    slot_dim: int,
    work_dir: Path,
    batch_size: int = 64,
    address: str | None = None,
    actors: int | None = None,
) -> Iterator[NewItem | SkippedFile]:
    """Decodes and encodes ``paths`` on Ray, writes the embedding shards under ``work_dir``, and yields them back
    in the order of ``paths``: a NewItem (slots already filtered to present objects) or a SkippedFile each."""
    ray = _ray()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus = int(ray.cluster_resources().get("CPU", 1))
    actors = actors or max(1, gpus or cpus // 2)
    shards = work_dir / SHARDS_FOLDER
    shutil.rmtree(shards, ignore_errors=True)  # shards of a run that stopped: their files are redone
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    log.info("encoding %d files on Ray with %d actor(s), %d GPU(s)", len(paths), actors, gpus)
    dataset = (
        ray.data.from_items([{"order": i, "path": p} for i, p in enumerate(paths)])
        .map_batches(decode_batch, fn_kwargs={"image_size": image_size}, batch_size=FILES_PER_DECODE_TASK)
        .map_batches(
            EncoderActor,
            fn_constructor_kwargs={"model_name": model_name},
            batch_size=batch_size,
            concurrency=actors,
            num_gpus=1 if gpus else 0,
        )
    )
    dataset.write_parquet(str(shards))
    try:
        for batch in ray.data.read_parquet(str(shards)).sort("order").iter_batches(batch_format="numpy"):
            yield from _records(batch, slot_dim)
    finally:
        shutil.rmtree(shards, ignore_errors=True)


def _records(batch: dict[str, np.ndarray], slot_dim: int) -> Iterator[NewItem | SkippedFile]:
    for i in range(len(batch["path"])):
        path, size, mtime_ns = str(batch["path"][i]), int(batch["size"][i]), int(batch["mtime_ns"][i])
        if batch["reason"][i]:
            yield SkippedFile(path, str(batch["reason"][i]), size, mtime_ns)
            continue
        slots = np.asarray(batch["slots"][i], np.float32)
        yield NewItem(
            path,
            str(batch["content_hash"][i]),
            size,
            mtime_ns,
            int(batch["width"][i]),
            int(batch["height"][i]),
            str(batch["format"][i]) or None,
            np.asarray(batch["vector"][i], np.float32),
            present_slots(slots) if slot_dim else None,
        )
