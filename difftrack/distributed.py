"""Scale-out under torchrun, shared by `difftrack analyze` and the TAP-Vid benchmark: each rank takes
the videos with index % world == rank; without torchrun everything runs in this one process."""

from __future__ import annotations

import os

import torch


def rank_and_world() -> tuple[int, int]:
    """(rank, world); joins the process group torchrun set up (gloo on CPU, NCCL on GPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():  # one GPU per rank, as NCCL's collectives expect
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def gather_on_rank_zero(local: list, world: int) -> list:
    """Every rank's ``local`` items concatenated on rank 0 (empty elsewhere); ends the process group."""
    if world == 1:
        return local
    import torch.distributed as dist

    gathered = [None] * world if dist.get_rank() == 0 else None
    dist.gather_object(local, gathered, dst=0)
    dist.destroy_process_group()
    return [item for part in gathered for item in part] if gathered is not None else []
