"""How often a gloo process aborts at exit after a finished multi-process run, ended two ways.

Each trial spawns ``--processes`` processes that do what a bundle's multi-process run does with its process group
(gloo, file store): share out a list and gather it back (``shard_sampler`` / ``gather_in_order``), run work on
rank 0 alone (``main_process_only``: a gloo group of its own, made and destroyed), then end the group either as
the toolkit did before (``barrier`` and ``destroy_process_group`` in the bundles' ``finalize``, and no collection
after ``main_process_only``'s group either: ``destroy``) or as it does now (``end_process_group``: the same, the
garbage collected at once after each group: ``end``). A process that
returns normally but dies at the interpreter's exit (``terminate called without an active exception``, SIGABRT)
counts as an abort. The two ways alternate, trial by trial, on the same machine; the script prints one JSON line
per way with its trials and aborts.

Usage::

    python bench/gloo_exit.py --trials 60 --processes 3
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medgmae.cli_types import positive_int  # noqa: E402


def _one_process(rank: int, store: str, world: int, way: str) -> None:
    """One process of a trial: the collective calls of a run, then the end of its process group ``way``."""
    import types

    import medgmae.distributed as distributed
    from medgmae.distributed import end_process_group, gather_in_order, main_process_only, shard_sampler

    if way == "destroy":  # as before: main_process_only did not collect the garbage either
        distributed.gc = types.SimpleNamespace(collect=lambda: 0)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    items = list(range(2 * world + 1))
    assert gather_in_order(list(shard_sampler(items))) == items
    main_process_only(lambda: None)
    if way == "end":
        end_process_group()
    else:
        dist.barrier()
        dist.destroy_process_group()


def _trial(way: str, world: int) -> str | None:
    """Run one trial; the abort's message, or ``None`` when every process exited cleanly."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            mp.start_processes(_one_process, args=(str(Path(tmp, "store")), world, way), nprocs=world,
                               start_method="spawn")  # fmt: skip
        except mp.ProcessExitedException as e:
            return str(e)
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=positive_int, default=60, help="trials of each way")
    parser.add_argument("--processes", type=positive_int, default=3, help="processes of each trial")
    args = parser.parse_args(argv)
    aborts: dict[str, list[str]] = {"destroy": [], "end": []}
    for i in range(args.trials):
        for way in aborts:
            if (message := _trial(way, args.processes)) is not None:
                aborts[way].append(message)
                print(f"trial {i + 1} {way}: {message}", file=sys.stderr, flush=True)
        print(f"{i + 1} trials: aborts {[len(found) for found in aborts.values()]}", file=sys.stderr, flush=True)
    for way, found in aborts.items():
        print(json.dumps({"way": way, "trials": args.trials, "processes": args.processes, "aborts": len(found)}))


if __name__ == "__main__":
    main()
