"""Past one machine: the Ray engine indexes a folder as the local pipeline does, and distributed training
sees the global batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmodal.indexes.collection import ImageIndex
from mmodal.pipeline import index_collection


@pytest.mark.slow
def test_ray_engine_indexes_a_folder_as_the_local_pipeline_does(model, shapes_test_dir, tmp_path):
    ray = pytest.importorskip("ray", reason="the Ray engine is the optional extra mmodal[scale]")
    folder = shapes_test_dir / "images"
    local = index_collection(model, [folder], tmp_path / "local", show_progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = index_collection(model, [folder], tmp_path / "ray", show_progress=False, engine="ray")
    finally:
        ray.shutdown()
    assert on_ray.indexed == local.indexed > 0 and on_ray.skipped == local.skipped
    assert not (tmp_path / "ray" / ".ray-shards").exists()  # the embedding shards go once they are in the index
    with ImageIndex.open(tmp_path / "local") as a, ImageIndex.open(tmp_path / "ray") as b:
        probe = np.ones((1, a.manifest.model.dim), np.float32)
        ids = {p: h.item.id for h in a.search(probe, a.count())[0] for p in h.item.paths}
        assert len(ids) == a.count() + on_ray.relinked
        assert ids == {p: h.item.id for h in b.search(probe, b.count())[0] for p in h.item.paths}
        item_ids = sorted(set(ids.values()))
        vectors_a, vectors_b = a.vectors_for(item_ids), b.vectors_for(item_ids)
        slots_a, slots_b = a.slots_for(item_ids), b.slots_for(item_ids)
        for i in item_ids:
            np.testing.assert_allclose(vectors_b[i], vectors_a[i], atol=1e-5)
            np.testing.assert_allclose(slots_b[i], slots_a[i], atol=1e-3)
        query = vectors_a[item_ids[0]][None]
        assert [h.path for h in a.search(query, 10)[0]] == [h.path for h in b.search(query, 10)[0]]


PER_PROCESS = 6


def _reading_step(rank: int | None, world: int, data_dir: str, out: str, init_file: str) -> None:
    """One reading-stage step: in one process (rank None) on every rank's batch in turn, gradients averaged; or as
    one of ``world`` gloo processes wrapped in DistributedDataParallel, on its own batch. Saves the losses and
    every gradient."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from mmodal.data.dataset import read_dataset
    from mmodal.training.config import TrainConfig
    from mmodal.training.distributed import TrainingStep
    from mmodal.training.reading import ReadingStage
    from mmodal.training.slot_batches import SlotTrainingData, freeze_towers
    from mmodal.training.stages import build_model
    from mmodal.training.temperature import Temperature

    torch.set_num_threads(1)
    config = TrainConfig(out=out, data=data_dir, model="tiny", speech_steps=0, parse_texts=4)
    torch.manual_seed(0)  # the same initial weights in every process
    model = build_model(config, None).eval()  # eval: no router jitter, so every process computes alike
    stage = ReadingStage(seen=False)
    freeze_towers(model, stage.modules)
    data = SlotTrainingData(read_dataset(data_dir), model.input_size)
    step = TrainingStep(model, stage.losses, Temperature())
    if rank is not None:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
        step = DistributedDataParallel(step, find_unused_parameters=True)
    totals = []
    for r in range(world) if rank is None else [rank]:
        losses = step(data, PER_PROCESS, np.zeros(0, np.int64), 0, config, np.random.default_rng(100 + r))
        total = sum(losses.values())
        (total / (world if rank is None else 1)).backward()
        totals.append(total.detach())
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    torch.save({"totals": totals, "grads": grads}, f"{out}/{rank}.pt")
    if rank is not None:
        dist.destroy_process_group()


def _spawned(rank, world, data_dir, out, init_file):
    _reading_step(rank, world, data_dir, out, init_file)


@pytest.mark.slow
def test_two_gloo_processes_train_on_their_own_batches_as_one_process_does_on_both(shapes_train_dir, tmp_path):
    import torch.multiprocessing as mp

    _reading_step(None, 2, str(shapes_train_dir), str(tmp_path), "")
    mp.spawn(_spawned, args=(2, str(shapes_train_dir), str(tmp_path), str(tmp_path / "init")), nprocs=2)
    single = torch.load(tmp_path / "None.pt")
    for rank in (0, 1):
        parallel = torch.load(tmp_path / f"{rank}.pt")
        torch.testing.assert_close(parallel["totals"][0], single["totals"][rank], rtol=1e-5, atol=1e-6)
        assert parallel["grads"].keys() == single["grads"].keys()
        for name, grad in single["grads"].items():  # DistributedDataParallel averaged both processes' gradients
            torch.testing.assert_close(parallel["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
def test_mmodal_train_runs_under_torchrun(shapes_train_dir, tmp_path):
    import os
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    command = [torchrun, "--nproc-per-node", "2", "-m", "mmodal.cli", "train", "--out", str(tmp_path / "run")]
    command += ["--data", str(shapes_train_dir), "--batch-size", "8", "--model", "tiny", "--device", "cpu"]
    command += ["--perception-steps", "1", "--reading-steps", "1", "--joint-steps", "1", "--speech-steps", "0"]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert "process 1 of 2" in done.stderr  # both processes joined the group
