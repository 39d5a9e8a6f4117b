"""Data-parallel training across processes started by ``torchrun`` (gloo on CPU, NCCL on CUDA).

Every process draws the same global batch (seeded by step) and trains on its own slice; DDP averages gradients,
so N processes with a global batch B follow a single process with batch B (to float tolerance). Rank 0 alone
writes checkpoints and logs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from p2core.errors import P2Error


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: ``world`` processes, this one is ``rank`` (``local_rank`` on its node)."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_slice(self, global_batch: int) -> slice:
        """This rank's part of a global batch of ``global_batch`` samples."""
        if global_batch % self.world:
            raise P2Error(f"batch_size {global_batch} is not divisible by the {self.world} training processes")
        size = global_batch // self.world
        return slice(self.rank * size, (self.rank + 1) * size)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of ``tensor`` over all ranks (a no-op for one process)."""
        if self.world > 1:
            tensor = tensor.clone()
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def any(self, flag: bool, device: torch.device) -> bool:
        """True when ``flag`` is true on any rank, so that all ranks stop at the same step."""
        if self.world == 1:
            return flag
        return bool(self.sum(torch.tensor([float(flag)], device=device)).item() > 0)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def init_from_environment(device: torch.device) -> tuple[Ranks, torch.device]:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1); returns the ranks and the device
    this process uses (its own GPU, ``cuda:LOCAL_RANK``, on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks(), device
    ranks = Ranks(world, int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return ranks, device


def shutdown(ranks: Ranks) -> None:
    if ranks.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
