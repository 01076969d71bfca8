"""Multi-process training under ``torchrun``: process-group set-up and the few collectives the trainer needs.

``torchrun --nproc-per-node N -m emgroup train ...`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; without
them everything here is a no-op for one process.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Processes:
    """Where this process stands: ``rank`` of ``world_size``, ``local_rank`` of ``local_world_size`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def main(self) -> bool:
        """The process that writes files and shows progress."""
        return self.rank == 0


def from_environment() -> Processes:
    """The torchrun layout of this process (one process when not under torchrun)."""
    env = os.environ
    return Processes(*(int(env.get(name, default)) for name, default in
                       (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0), ("LOCAL_WORLD_SIZE", 1))))


def init(processes: Processes, device: torch.device) -> None:
    """Join the process group (NCCL on CUDA, gloo on the CPU) when there is more than one process."""
    if processes.world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over all processes (returned, not modified in place)."""
    values = values.clone()
    if dist.is_initialized():
        dist.all_reduce(values)
    return values


def all_gather(obj) -> list:
    """One picklable object from every process, in rank order."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
