"""Helpers of the tests that spawn gloo processes on the CPU (``torch.multiprocessing.start_processes``)."""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import torch.distributed as dist


def meet(store: str, rank: int, world: int) -> None:
    """Wait (up to 2 minutes) until all ``world`` spawned processes have started: each imports torch and the
    toolkit first, which on a loaded machine takes seconds longer in one than in another."""
    meeting = dist.FileStore(f"{store}.meet", world)
    meeting.set_timeout(timedelta(minutes=2))
    meeting.set(f"rank{rank}", "started")
    meeting.wait([f"rank{r}" for r in range(world)])


def end_without_teardown() -> None:
    """End a spawned process, its results written, without the interpreter's teardown: there gloo's own clean-up,
    after ``destroy_process_group``, aborts a few processes in a hundred (``terminate called without an active
    exception``, SIGABRT) on this PyTorch, which is not what these tests check."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
