"""Processes sharing a disk cache pre-process each missing item once: the first claims it, the others wait for its
file; claims of killed, failed or far-away builders are taken over, and none is left behind."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import medgmae.data.cache_claims as claims_mod
from medgmae.data.cache import DiskCacheDataset, cache_folder, item_hash, training_dataset
from medgmae.data.cache_claims import claim_path
from medgmae.temp_names import REMOVED_BECAUSE

from cache_claims_helpers import build_beside_others, builds, chain, expected_item, items, write_claim

WAITING = "waiting for another process's pre-processing"


def _claim_of(folder: Path, item: dict) -> Path:
    """The claim file of ``item``'s cache file in ``folder``."""
    return claim_path(folder / f"{item_hash(item).decode()}.pt")


def _same(got: dict, item: dict) -> bool:
    return got["name"] == item["name"] and torch.equal(torch.as_tensor(got["image"]), expected_item(item)["image"])


def test_processes_building_one_cache_at_once_build_each_item_once(tmp_path):
    """Three processes started together read the same four items (two in the same order, one in the reverse
    order): each item is pre-processed once, every process gets the items the pre-processing gives directly, and
    no claim is left; a process says at most once that it waits."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    data, cache, counter, ready = items(4), tmp_path / "cache", tmp_path / "builds.txt", tmp_path / "ready"
    cache.mkdir()
    ready.mkdir()
    orders = [[0, 1, 2, 3], [0, 1, 2, 3], [3, 2, 1, 0]]
    with ProcessPoolExecutor(3, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(build_beside_others, [(data, order, cache, counter, ready, 3) for order in orders]))
    assert sorted(builds(counter)) == [item["name"] for item in data]  # each once, whoever built it
    for result in results:
        assert sorted(result["images"]) == sorted(item["name"] for item in data)
        assert all(_same({"name": item["name"], "image": result["images"][item["name"]]}, item) for item in data)
        assert result["waits"] <= 1
    assert len(list(cache.glob("*.pt"))) == 4 and not list(cache.glob(".*"))


@pytest.mark.parametrize("whose", ["a dead process on this host", "this process, not one of its claims"])
def test_a_claim_of_a_process_that_no_longer_runs_is_taken_over_at_once(tmp_path, dead_pid, caplog, monkeypatch,
                                                                        whose):  # fmt: skip
    monkeypatch.setattr(claims_mod, "CLAIM_SECONDS", 5.0)  # a claim wrongly waited on fails the test, not hangs it
    data, counter = items(1), tmp_path / "builds.txt"
    (tmp_path / "cache").mkdir()
    claim = _claim_of(tmp_path / "cache", data[0])
    write_claim(claim, pid=dead_pid if whose.startswith("a dead") else os.getpid())
    ds = DiskCacheDataset(data, chain(counter, pause=0.0), tmp_path / "cache")
    pauses, sleep = [], time.sleep
    monkeypatch.setattr(time, "sleep", lambda s: pauses.append(s) or sleep(s))
    with caplog.at_level(logging.INFO, logger="medgmae"):
        got = ds[0]
    assert not [p for p in pauses if p > 0]  # never paused to wait (the build itself pauses 0 s)
    assert _same(got, data[0]) and builds(counter) == ["case-0"] and not claim.exists()
    assert not any(WAITING in r.getMessage() for r in caplog.records)
    assert any("that a process no longer running" in r.getMessage() for r in caplog.records)


def test_a_claim_held_on_another_host_is_waited_on_for_the_bound_then_built(tmp_path, monkeypatch, caplog):
    """The process of another host's claim cannot be checked: it is waited on for CLAIM_SECONDS (here 1 s), once
    said for the folder, then built here; a claim already older than that is taken over at once."""
    monkeypatch.setattr(claims_mod, "CLAIM_SECONDS", 1.0)
    data, counter, folder = items(3), tmp_path / "builds.txt", tmp_path / "cache"
    folder.mkdir()
    ds = DiskCacheDataset(data, chain(counter, pause=0.0), folder)
    waited = []
    with caplog.at_level(logging.INFO, logger="medgmae"):
        for i in (0, 1):  # each claimed anew just before it is read
            write_claim(_claim_of(folder, data[i]), host="other-node.cluster", pid=os.getpid())
            start = time.monotonic()
            assert _same(ds[i], data[i])
            waited.append(time.monotonic() - start)
        write_claim(_claim_of(folder, data[2]), host="other-node.cluster", pid=os.getpid(), start=time.time() - 3600)
        start = time.monotonic()
        assert _same(ds[2], data[2])
        waited.append(time.monotonic() - start)
    assert all(1.0 <= w < 5.0 for w in waited[:2]) and waited[2] < 0.5, waited
    said = [r.getMessage() for r in caplog.records if WAITING in r.getMessage()]
    assert len(said) == 1 and str(folder) in said[0] and "other-node.cluster" in said[0]  # once, not per item
    assert builds(counter) == ["case-0", "case-1", "case-2"] and not list(folder.glob(".*.claim"))


def test_a_builder_that_fails_leaves_no_claim_and_its_waiter_builds(tmp_path, caplog, monkeypatch):
    """Two threads of one process want one item: the first claims it and fails; the second, waiting on that
    claim, then builds it (no deadlock within a process)."""
    monkeypatch.setattr(claims_mod, "CLAIM_SECONDS", 10.0)  # a claim left behind would be waited on that long
    data, counter, folder = items(1), tmp_path / "builds.txt", tmp_path / "cache"
    folder.mkdir()
    ds = DiskCacheDataset(data, chain(counter, pause=1.0, fail_first=True), folder)
    claim, errors = _claim_of(folder, data[0]), []

    def first() -> None:
        try:
            ds[0]
        except Exception as e:
            errors.append(e)

    thread = threading.Thread(target=first)
    thread.start()
    deadline = time.monotonic() + 30
    while not claim.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert claim.exists()
    start = time.monotonic()
    with caplog.at_level(logging.INFO, logger="medgmae"):
        got = ds[0]
    assert time.monotonic() - start < 8.0  # the failed build's claim went with it
    thread.join(30)
    assert len(errors) == 1 and "pre-processing case-0 failed" in repr(errors[0].__cause__ or errors[0])
    assert _same(got, data[0]) and builds(counter) == ["case-0", "case-0"] and not claim.exists()
    assert any(WAITING in r.getMessage() for r in caplog.records)


_HOLDER = """
import sys
sys.path.insert(0, {tests!r})
from cache_claims_helpers import chain, items
from medgmae.data.cache import DiskCacheDataset
DiskCacheDataset(items(1), chain({counter!r}, pause=120.0), {folder!r})[0]
"""


def test_sigterm_removes_the_claims_a_process_holds(tmp_path):
    """A builder stopped by SIGTERM (a batch system's time limit) removes its claim and still ends by SIGTERM."""
    data, counter, folder = items(1), tmp_path / "builds.txt", tmp_path / "cache"
    folder.mkdir()
    code = _HOLDER.format(tests=str(Path(__file__).parent), counter=str(counter), folder=str(folder))
    proc = subprocess.Popen([sys.executable, "-c", code])
    claim, deadline = _claim_of(folder, data[0]), time.monotonic() + 120
    while not builds(counter) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert claim.exists() and builds(counter) == ["case-0"]  # building, under its claim
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == -signal.SIGTERM and not claim.exists()


def test_sigterm_removes_the_claims_then_runs_the_handler_it_replaced(tmp_path):
    """Where the run handles SIGTERM itself (the bundles' handler stops the run with an exception), the claims are
    removed first, then that handler runs, and it is SIGTERM's handler again afterwards."""
    from monai.transforms import Compose

    from cache_claims_helpers import TerminatedWhileBuilding

    class Stopped(Exception):
        pass

    def stop(signum, frame):
        raise Stopped

    data, folder = items(1), tmp_path / "cache"
    folder.mkdir()
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with pytest.raises(Exception) as caught:
            DiskCacheDataset(data, Compose([TerminatedWhileBuilding()]), folder)[0]
        assert signal.getsignal(signal.SIGTERM) is stop
    finally:
        signal.signal(signal.SIGTERM, previous)
    chain_of_errors = [caught.value, caught.value.__cause__, caught.value.__context__]
    assert any(isinstance(e, Stopped) for e in chain_of_errors), chain_of_errors
    assert not list(folder.glob(".*.claim")) and not list(folder.glob("*.pt"))


def test_a_run_start_removes_claims_that_killed_builders_left(tmp_path, dead_pid, caplog):
    """Claims of processes gone from this host (a minute old) and claims unchanged for a day are removed at a run's
    start, as killed writers' temporary files are, and said; a live process's claim, a recent one of a gone
    process and a file so named holding no claim stay."""
    transform = chain(tmp_path / "builds.txt")
    folder = cache_folder(tmp_path / "cache", transform)
    old, older = time.time() - 120, time.time() - 2 * 24 * 3600
    dead, live, far, foreign, recent = (folder / f".{c * 64}.pt.claim" for c in "abcde")
    claims = [(dead, None, dead_pid, old), (live, None, None, old), (far, "other-node.cluster", None, older),
              (recent, None, dead_pid, None)]  # fmt: skip
    for path, host, pid, when in claims:
        write_claim(path, host=host, pid=pid)
        if when:
            os.utime(path, (when, when))
    foreign.write_text("not a claim")
    os.utime(foreign, (older, older))
    with caplog.at_level(logging.INFO, logger="medgmae"):
        ds = training_dataset(items(1), transform, tmp_path / "cache")
    assert Path(ds.cache_dir) == folder
    assert not dead.exists() and not far.exists() and live.exists() and foreign.exists() and recent.exists()
    said = [r.getMessage() for r in caplog.records if "killed runs left" in r.getMessage()]
    assert said == [f"removed 2 claims of pre-processing that killed runs left in {folder} ({REMOVED_BECAUSE})"]
