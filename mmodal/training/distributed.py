"""Data-parallel training under ``torchrun``: one process per GPU (NCCL) or per CPU worker (gloo).

    torchrun --nproc-per-node 2 -m mmodal.cli train --out runs/ddp ...

Every process draws its own batches (its own random stream) and computes the stage's losses on them; PyTorch's
DistributedDataParallel averages the gradients, so a step of N processes trains on N batches. Run without
``torchrun`` it is one process and changes nothing.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def start(device: torch.device) -> Ranks:
    """Joins the process group that ``torchrun`` describes in the environment; one process without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    ranks = Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    log.info("process %d of %d", ranks.rank, ranks.world)
    return ranks


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class TrainingStep(torch.nn.Module):
    """The model with one step's loss function as its forward, so DistributedDataParallel can wrap it."""

    def __init__(self, model: torch.nn.Module, losses, temperature: torch.nn.Module):
        super().__init__()
        self.model = model
        self.losses = losses
        self.temperature = temperature

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        return self.losses(self.model, *args, **kwargs, temperature=self.temperature)
