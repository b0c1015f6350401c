"""Where this process stands under ``torch.distributed``: the one place the toolkit asks for its rank, the number
of processes, whether it is the process that writes and logs (rank 0), and waits for the others.

Every function also works without a process group (one process: rank 0 of 1) and before ``torchrun``'s process
group is made (:func:`is_main_process` then reads torchrun's ``RANK`` variable). Light on purpose: torch only.
"""

from __future__ import annotations

import os

import torch.distributed as dist

__all__ = ["barrier", "in_process_group", "is_main_process", "rank_world"]


def in_process_group() -> bool:
    """Whether a ``torch.distributed`` process group is initialised in this process."""
    return dist.is_available() and dist.is_initialized()


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` under torch.distributed, ``(0, 1)`` without a process group."""
    if in_process_group():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """True on rank 0 and outside torch.distributed; before the process group is made, torchrun's ``RANK`` decides
    (so that a line logged that early is not printed once per process)."""
    if in_process_group():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0").strip() in ("", "0")


def barrier() -> None:
    """Wait for every process of the group (nothing to wait for without one)."""
    if in_process_group():
        dist.barrier()
