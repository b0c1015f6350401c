"""Where this process stands under ``torch.distributed``: the one place the toolkit asks for its rank, the number
of processes, whether it is the process that writes and logs (rank 0), and waits for the others.

Every function also works without a process group (one process: rank 0 of 1) and before ``torchrun``'s process
group is made (:func:`is_main_process` then reads torchrun's ``RANK`` variable). Light on purpose: torch only, and
only once a process group can exist: the questions asked without one (rank, process count, main process) import
nothing, so that a command line that only parses its arguments does not load torch.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from datetime import timedelta
from typing import Callable

__all__ = ["MAIN_PROCESS_WAIT", "gather_in_order", "shard_sampler", "sharded_loader", "warn_if_sampler_repeats", "barrier", "end_process_group", "in_process_group", "is_main_process", "loader_workers", "main_process_only", "process_rank", "process_count", "rank_world"]


def in_process_group() -> bool:
    """Whether a ``torch.distributed`` process group is initialised in this process (never before something has
    imported ``torch.distributed``, which is not imported here for the question)."""
    dist = sys.modules.get("torch.distributed")
    return dist is not None and dist.is_available() and dist.is_initialized()


def _dist():
    """``torch.distributed``, imported on first use (the functions that call it run under a process group)."""
    import torch.distributed as dist

    return dist


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` under torch.distributed, ``(0, 1)`` without a process group."""
    if in_process_group():
        return _dist().get_rank(), _dist().get_world_size()
    return 0, 1


def process_rank() -> int:
    """This process's rank: the process group's, or before one is made torchrun's ``RANK`` (0 without either)."""
    if in_process_group():
        return _dist().get_rank()
    rank = os.environ.get("RANK", "").strip()
    return int(rank) if rank.isdigit() else 0


def process_count() -> int:
    """The number of training processes: the process group's, or before one is made torchrun's ``WORLD_SIZE``
    (1 without either)."""
    if in_process_group():
        return _dist().get_world_size()
    size = os.environ.get("WORLD_SIZE", "").strip()
    return max(1, int(size)) if size.isdigit() else 1


def is_main_process() -> bool:
    """True on rank 0 and outside torch.distributed; before the process group is made, torchrun's ``RANK`` decides
    (so that a line logged that early is not printed once per process)."""
    return process_rank() == 0


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, as PyTorch's worker-count warning counts them; the machine's
    CPUs where the affinity cannot be read)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def loader_workers(at_most: int = 4) -> int:
    """Data-loader workers for one process: the CPUs this process may use (:func:`usable_cpus`) shared among the
    node's torchrun processes (``LOCAL_WORLD_SIZE``), at least 1 and at most ``at_most``."""
    return min(int(at_most), max(1, usable_cpus() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1))))


def barrier() -> None:
    """Wait for every process of the group (nothing to wait for without one)."""
    if in_process_group():
        _dist().barrier()


def end_process_group() -> None:
    """The end of a multi-process run (its bundle's ``finalize``): wait for every process, destroy the process
    group, then collect the garbage at once (nothing without a group).

    The collection keeps the group's objects in reference cycles from being torn down with the interpreter, where
    gloo aborted a few processes in a hundred that had destroyed their group and gone on working
    (``terminate called without an active exception``, SIGABRT: torchrun then reports a finished run as failed);
    ``bench/gloo_exit.py`` measures it (none with a barrier before the destroy, as here, in its trials; one such
    abort was seen at the end of a two-process fine-tuning test).
    """
    if not in_process_group():
        return
    dist = _dist()
    dist.barrier()
    dist.destroy_process_group()
    gc.collect()


#: How long the other ranks wait for the work rank 0 does for all in :func:`main_process_only`: the pre-check of a
#: large dataset runs for tens of minutes, past the process group's own timeout (10 minutes under NCCL, 30 under
#: gloo), which ended the waiting ranks' collective call and with it the run.
MAIN_PROCESS_WAIT = timedelta(hours=24)


def _waiting_group() -> object:
    """A gloo group of every process whose calls wait up to :data:`MAIN_PROCESS_WAIT`, made by every rank at the
    same call (:func:`main_process_only` is reached by all) and destroyed when that call ends: a group kept in a
    module variable outlived ``destroy_process_group`` and was torn down at interpreter exit, where gloo aborted
    the process (``terminate called without an active exception``, exit signal 6 after a finished run)."""
    return _dist().new_group(backend="gloo", timeout=MAIN_PROCESS_WAIT)


def main_process_only(work: Callable[[], object], error: type[Exception] = RuntimeError) -> None:
    """Run ``work`` on rank 0 alone (files every rank then reads, such as a generated dataset) while the other ranks
    wait, up to :data:`MAIN_PROCESS_WAIT` however short the process group's timeout; when it fails, every rank
    stops: rank 0 with its own exception, the others with ``error`` carrying its message, so that no rank waits for
    ever at the next collective call.

    Args:
        work: what to do; its return value is not kept.
        error: the exception type the other ranks raise (e.g. ``DatasetError`` for data problems).
    """
    failure: list = [None]
    caught: Exception | None = None
    group = _waiting_group() if in_process_group() else None
    if is_main_process():
        try:
            work()
        except Exception as e:  # every rank must hear of it before rank 0 raises
            message = f"{type(e).__name__}: {e}" if not isinstance(e, error) else str(e)
            failure[0], caught = (message, _plain_attributes(e) if isinstance(e, error) else {}), e
            if group is None:
                raise
    if group is not None:
        try:
            _dist().broadcast_object_list(failure, src=0, group=group)
        finally:  # also when a peer went away: no group is left for the exit to tear down
            _dist().destroy_process_group(group)
            gc.collect()  # nor its objects in reference cycles (end_process_group)
    if caught is not None:
        raise caught
    if failure[0] is not None:
        message, attributes = failure[0]
        raised = error(message)
        for name, value in attributes.items():  # e.g. a DatasetError's needed_classes, so every rank can advise
            setattr(raised, name, value)
        raise raised


def _plain_attributes(e: Exception) -> dict:
    """The attributes of ``e`` that pickle as plain data (numbers, strings, lists of them...), sent to the other
    ranks with its message; anything else stays on rank 0."""
    plain = (bool, int, float, str, list, tuple, dict, type(None))
    return {k: v for k, v in vars(e).items() if isinstance(v, plain) and not k.startswith("_")}


def warn_if_sampler_repeats(count: int, noun: str = "case") -> None:
    """Warn (rank 0) when the training items do not split evenly among the processes: the distributed sampler pads
    each epoch with repeated items so that every process has as many (``ceil(count / processes)``), and the
    repeated ones are trained on more than once per epoch.

    Args:
        count: training items (cases, volumes).
        noun: what an item is called in the warning (``"case"``, ``"volume"``).
    """
    processes = process_count()
    extra = -count % processes  # the sampler's padding: ceil(count / processes) * processes - count draws
    if extra and is_main_process():
        plural = lambda n, word=noun: word if n == 1 else f"{word}s"  # noqa: E731
        per, twice = -(-count // processes), min(extra, count)  # the padding repeats the first items, cyclically
        logging.getLogger("medgmae").warning(
            "%d training %s for %d processes: the distributed sampler gives every process %d, padding each epoch with "
            "%d repeated %s, so %d %s %s trained more than once in that epoch; a multiple of %d %s avoids it",
            count, plural(count), processes, per, extra, plural(extra, "draw"), twice, plural(twice),
            "is" if twice == 1 else "are", processes, plural(processes),
        )  # fmt: skip


def shard_sampler(dataset: object) -> object | None:
    """A sampler that gives this process every ``world_size``-th item of ``dataset``, in order (rank ``r``: items
    ``r, r + W, r + 2W, ...``; some ranks one fewer), to spread an evaluation over the processes; MONAI's metrics
    all-gather their per-case values, so the metric is the one of the whole list, once each.

    ``None`` without a process group, and when ``dataset`` has fewer items than there are processes: a rank
    without an item would never join the metric's all-gather, leaving the others waiting; every process then
    evaluates the whole list (the all-gathered values repeat every case equally often, the mean is unchanged).

    Args:
        dataset: the evaluation dataset (anything with ``len``).

    Returns:
        a :class:`monai.data.DistributedSampler` (``shuffle=False``, ``even_divisible=False``) or ``None``.
    """
    rank, world = rank_world()
    if world == 1 or len(dataset) < world:
        return None
    from monai.data import DistributedSampler

    sampler = DistributedSampler(dataset, even_divisible=False, shuffle=False, num_replicas=world, rank=rank)
    sampler.deals_in_order = True  # the order gather_in_order undoes (sharded_loader looks for this mark)
    return sampler


def sharded_loader(loader: object) -> bool:
    """Whether ``loader`` (a data loader, or ``None``) draws this process's share of its dataset through a
    :func:`shard_sampler` (under a process group). Another distributed sampler (one that pads or shuffles) is not
    taken for one: :func:`gather_in_order` would repeat or misplace its items."""
    return in_process_group() and getattr(getattr(loader, "sampler", None), "deals_in_order", False) is True


def gather_in_order(items: list) -> list:
    """Every rank's ``items`` (picklable), collected on every rank in the dataset's order when each rank's list
    holds the items :func:`shard_sampler` gave it (rank ``r``'s ``i``-th item is item ``i * W + r``).

    Args:
        items: this rank's items, in the order its sampler drew them.

    Returns:
        all ranks' items, interleaved back into one list (``items`` itself without a process group).
    """
    if not in_process_group():
        return list(items)
    dist = _dist()
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, list(items))
    return [part[i] for i in range(max(len(p) for p in parts)) for part in parts if i < len(part)]
