"""``medgmae.distributed``: rank, process count and the writing process, with and without a process group."""

import pytest
import torch.distributed as dist

from medgmae.distributed import barrier, in_process_group, is_main_process, rank_world


@pytest.mark.parametrize("rank, main", [(None, True), ("0", True), ("", True), ("1", False), ("3", False)])
def test_before_a_process_group_torchruns_rank_decides(monkeypatch, rank, main):
    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    assert not in_process_group()
    assert is_main_process() is main
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
