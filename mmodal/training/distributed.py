"""Data-parallel training under ``torchrun``: one process per GPU (NCCL) or per CPU worker (gloo).

    torchrun --nproc-per-node 2 -m mmodal.cli train --out runs/ddp ...

Every process draws the same global batch (the same seed), encodes its own rows, and gathers the embeddings of
all rows with their gradients, so the contrastive loss sees negatives from the whole global batch; PyTorch's
DistributedDataParallel averages the gradients. Run without ``torchrun`` it is one process and changes nothing.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as distributed_functional

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, per_process: int) -> slice:
        """This process's rows of a global batch of ``world × per_process``."""
        return slice(self.rank * per_process, (self.rank + 1) * per_process)


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


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every process's ``x`` (same shape on each) stacked in rank order, with gradients flowing back to each."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    return torch.cat(distributed_functional.all_gather(x.contiguous()))


class TrainingStep(torch.nn.Module):
    """The model with one step's loss function as its forward, so DistributedDataParallel can wrap it."""

    def __init__(self, model: torch.nn.Module, losses):
        super().__init__()
        self.model = model
        self.losses = losses

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        return self.losses(self.model, *args, **kwargs)
