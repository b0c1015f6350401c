"""``medgmae.distributed``: rank, process count and the writing process, with and without a process group."""

import pytest
import torch.distributed as dist

from distributed_helpers import end_without_teardown, meet
from medgmae.distributed import barrier, end_process_group, in_process_group, is_main_process, process_rank, rank_world


@pytest.mark.parametrize("rank, main", [(None, True), ("0", True), ("", True), ("1", False), ("3", False)])
def test_before_a_process_group_torchruns_rank_decides(monkeypatch, rank, main):
    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    assert not in_process_group()
    assert is_main_process() is main
    assert process_rank() == (int(rank) if rank else 0)
    assert rank_world() == (0, 1)
    barrier()  # nothing to wait for


def test_inside_a_process_group_the_group_decides(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")  # a stale variable: the group's own rank wins
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert in_process_group() and rank_world() == (0, 1) and is_main_process()
        barrier()
    finally:
        dist.destroy_process_group()
    assert not in_process_group()


def _two_ranks(rank: int, store: str, fail: bool | str, results: str) -> None:
    """One of two gloo processes: rank 0 does (or fails) the work, both record how main_process_only ended.
    ``fail="advice"``: the work raises the given error type carrying an attribute (a count the message advises);
    ``fail="slow"``: the work outlasts the process group's timeout (2 s), which the waiting rank must survive."""
    import json
    import time
    from datetime import timedelta
    from pathlib import Path

    from medgmae.distributed import main_process_only

    def work() -> None:
        if fail == "slow":  # longer than the process group's timeout, as a large dataset's pre-check under NCCL
            time.sleep(4)
        elif fail == "advice":
            e = ValueError("labels 0-4 found")
            e.needed_classes = 5
            raise e
        elif fail:
            raise OSError("disk full")
        done.append(1)

    timeout = timedelta(seconds=2 if fail == "slow" else 60)
    meet(store, rank, 2)  # the 2 s timeout also bounds the group's set-up: a rank started late must not hit it
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2, timeout=timeout)
    done = []
    try:
        main_process_only(work, ValueError)
        outcome = {"raised": None, "worked": bool(done)}
    except Exception as e:
        outcome = {"raised": [type(e).__name__, str(e)], "worked": bool(done), "needed": getattr(e, "needed_classes", None)}
    finally:
        # the waiting group is gone with the call: one kept alive was torn down at exit, where gloo aborted
        outcome["groups"] = len(dist.distributed_c10d._world.pg_map)
        dist.destroy_process_group()
    Path(results, f"{rank}.json").write_text(json.dumps(outcome))
    end_without_teardown()


@pytest.mark.parametrize("fail", [False, True, "advice", "slow"])
def test_main_process_only_stops_every_rank_when_rank_0_fails(tmp_path, fail):
    """Two gloo processes: the work runs on rank 0 alone; its failure stops rank 1 too (no rank left waiting),
    rank 0 with its own exception and rank 1 with the given type and rank 0's message, and the error's plain
    attributes (a pre-check's class count, which the fine-tuning error advises on every rank). Work that outlasts
    the process group's timeout leaves rank 1 waiting, not failing: a large dataset's pre-check runs past NCCL's
    10 minutes."""
    import json

    import torch.multiprocessing as mp

    mp.start_processes(_two_ranks, args=(str(tmp_path / "store"), fail, str(tmp_path)), nprocs=2, start_method="spawn")
    got = [json.loads((tmp_path / f"{r}.json").read_text(encoding="utf-8")) for r in (0, 1)]
    if not fail or fail == "slow":
        assert got == [{"raised": None, "worked": True, "groups": 1}, {"raised": None, "worked": False, "groups": 1}]
    elif fail == "advice":
        assert got == [{"raised": ["ValueError", "labels 0-4 found"], "worked": False, "needed": 5, "groups": 1},
                       {"raised": ["ValueError", "labels 0-4 found"], "worked": False, "needed": 5, "groups": 1}]
    else:
        assert got == [{"raised": ["OSError", "disk full"], "worked": False, "needed": None, "groups": 1},
                       {"raised": ["ValueError", "OSError: disk full"], "worked": False, "needed": None, "groups": 1}]


def _three_ranks_share(rank: int, store: str, results: str) -> None:
    """One of three gloo processes: the indices ``shard_sampler`` gives it of 7 items (none of 2), gathered back."""
    import json
    from pathlib import Path

    from torch.utils.data import DataLoader, DistributedSampler

    from medgmae.distributed import gather_in_order, shard_sampler, sharded_loader

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=3)
    try:
        items = list(range(7))
        mine = list(shard_sampler(items))
        outcome = {"mine": mine, "all": gather_in_order([f"case{i}" for i in mine]), "few": shard_sampler([0, 1]),
                   "sharded": [sharded_loader(DataLoader(items, sampler=shard_sampler(items))),  # padding: not ours
                               sharded_loader(DataLoader(items, sampler=DistributedSampler(items, shuffle=False)))]}
    finally:
        dist.destroy_process_group()
    Path(results, f"{rank}.json").write_text(json.dumps(outcome))
    end_without_teardown()


def test_shard_sampler_deals_the_items_out_and_gather_in_order_puts_them_back():
    """7 items on 3 processes: ranks 0, 1, 2 get items 0 3 6 / 1 4 / 2 5, each once; every rank gathers all seven
    back in their order; 2 items (fewer than the processes) are not shared out; a loader with another distributed
    sampler (torch's pads to 9) is not taken for a shared-out one. Without a process group: no sampler, and the
    items as they are."""
    import json
    import tempfile
    from pathlib import Path

    import torch.multiprocessing as mp

    from medgmae.distributed import gather_in_order, shard_sampler

    assert shard_sampler(list(range(7))) is None and gather_in_order(["a", "b"]) == ["a", "b"]
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_three_ranks_share, args=(str(Path(tmp, "store")), tmp), nprocs=3, start_method="spawn")
        got = [json.loads(Path(tmp, f"{r}.json").read_text(encoding="utf-8")) for r in range(3)]
    assert [g["mine"] for g in got] == [[0, 3, 6], [1, 4], [2, 5]]
    assert all(g["all"] == [f"case{i}" for i in range(7)] and g["few"] is None for g in got)
    assert all(g["sharded"] == [True, False] for g in got)


def test_end_process_group_ends_the_group_and_does_nothing_without_one(tmp_path):
    """The multi-process bundles' ``finalize``: without a group nothing happens (a one-process run); with one, every
    process has met and the group is gone (``bench/gloo_exit.py`` measures the exits it keeps clean)."""
    end_process_group()
    assert not in_process_group()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    end_process_group()
    assert not in_process_group() and not dist.is_initialized()
