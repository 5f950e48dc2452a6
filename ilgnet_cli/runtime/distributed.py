"""One process or many under torchrun: which rank this is, which device it uses, which share of
the work is its own, and the one way results come back together on rank 0.

Shared by ``train``, ``eval`` and sharded ``score``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 when run alone)."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> Sequence[T]:
        """This rank's share of ``items``: every world-th, from its rank (score and eval alike)."""
        return items[self.rank::self.world]

    def gather(self, part: T) -> list[T] | None:
        """Every rank's ``part``, in rank order, on rank 0 (None on the others); ``[part]`` alone."""
        if self.world == 1:
            return [part]
        parts: list[T | None] = [None] * self.world
        dist.all_gather_object(parts, part)
        if not self.main:
            return None
        return [p for p in parts if p is not None]

    def end(self) -> None:
        """Leave the job once every rank is done with collectives. A gloo rank that simply exits
        while its group lives aborts in C++ ("terminate called without an active exception") about
        every other run, failing the whole torchrun job."""
        if self.world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def current(device: torch.device | None = None) -> Dist:
    """This process's place in an already initialised job (rank 0 of 1 outside torchrun)."""
    device = device or torch.device("cpu")
    if not dist.is_initialized():
        return Dist(device=device)
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), device=device)


def init_distributed(device: torch.device) -> Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; without them this is a single process.

    Under torchrun on CUDA each rank gets its own GPU (``cuda:LOCAL_RANK``) in ``Dist.device``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return current(device)
