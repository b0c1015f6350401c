"""How often a gloo process aborts at exit after its process group was destroyed, ended four ways.

Each trial spawns ``--processes`` processes that do what a multi-process run does with its process group (gloo,
file store): share out a list and gather it back (``shard_sampler`` / ``gather_in_order``), then end the group:

- ``gather-destroy``: ``destroy_process_group`` right after the gather (as the tests' spawned processes did);
- ``gather-destroy-collect``: the same, then ``gc.collect()``;
- ``bundle-before``: rank 0's work for all (``main_process_only``, with a gloo group of its own), then ``barrier``
  and ``destroy_process_group``, with no garbage collected after either group (the bundles' ``finalize`` before);
- ``bundle-now``: the same work, then ``end_process_group`` (barrier, destroy, collect; ``main_process_only``
  collecting after its group too: the bundles now).

A process that returns normally but dies at the interpreter's exit (``terminate called without an active
exception``, SIGABRT) counts as an abort. The ways alternate, trial by trial, on the same machine; the script
prints one JSON line per way with its trials and aborts.

Usage::

    python bench/gloo_exit.py --trials 50 --processes 3 [--ways gather-destroy gather-destroy-collect]
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
    """One process of a trial: the collective calls of a run, then the end of its process group ``way``; then it
    writes what it gathered to a file beside the store, as the tests' processes did and a run writes its last lines
    (with nothing done after the destroy, the aborts were rarer: none in 26 trials of any way)."""
    import gc
    import types

    import medgmae.distributed as distributed
    from medgmae.distributed import end_process_group, gather_in_order, main_process_only, shard_sampler

    if way == "bundle-before":  # main_process_only collected no garbage after its group either
        distributed.gc = types.SimpleNamespace(collect=lambda: 0)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    items = list(range(2 * world + 1))
    assert gather_in_order(list(shard_sampler(items))) == items
    if way.startswith("gather-destroy"):
        dist.destroy_process_group()
        if way.endswith("collect"):
            gc.collect()
    else:
        main_process_only(lambda: None)
        if way == "bundle-now":
            end_process_group()
        else:
            dist.barrier()
            dist.destroy_process_group()
    Path(f"{store}.{rank}.json").write_text(json.dumps(items))


#: The ways of ending the process group, in the order each trial runs them.
WAYS = ("gather-destroy", "gather-destroy-collect", "bundle-before", "bundle-now")


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
    parser.add_argument("--trials", type=positive_int, default=50, help="trials of each way")
    parser.add_argument("--processes", type=positive_int, default=3, help="processes of each trial")
    parser.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS), help="the ways to run (default: all)")
    args = parser.parse_args(argv)
    aborts: dict[str, list[str]] = {way: [] for way in WAYS if way in args.ways}
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
