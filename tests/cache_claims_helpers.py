"""What the tests of the disk cache's claims share: a slow, counted pre-processing, its independent reference, and
the work of a process building a cache beside others (run in spawned processes, hence a module of its own)."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch
from monai.transforms import Compose, Transform

from medgmae.temp_names import host_tag


def expected_item(item: dict) -> dict:
    """The pre-processed item, computed directly: a small volume that depends on the item's ``value``."""
    value = float(item["value"])
    return {"name": item["name"], "image": torch.arange(24, dtype=torch.float32).reshape(1, 2, 3, 4) * value + value}


class SlowCountedBuild(Transform):
    """A deterministic pre-processing that takes ``pause`` seconds and appends ``<name> <pid>`` to ``counter`` each
    time it runs; with ``fail_first`` its first run of an item raises after the pause."""

    def __init__(self, counter: str, pause: float = 0.5, fail_first: bool = False) -> None:
        self.counter, self.pause, self.fail_first = counter, pause, fail_first

    def __call__(self, item: dict) -> dict:
        with open(self.counter, "a", encoding="utf-8") as f:  # one short append: whole lines from every process
            f.write(f"{item['name']} {os.getpid()}\n")
        time.sleep(self.pause)
        if self.fail_first and builds(self.counter).count(item["name"]) == 1:
            raise RuntimeError(f"pre-processing {item['name']} failed")
        return expected_item(item)


class TerminatedWhileBuilding(Transform):
    """A pre-processing during which the process receives SIGTERM."""

    def __call__(self, item: dict) -> dict:
        import signal

        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5.0)  # the handler runs in the meantime
        return expected_item(item)


def builds(counter: str | Path) -> list[str]:
    """The item names the counter file lists, one per run of the pre-processing."""
    path = Path(counter)
    return [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def items(n: int) -> list[dict]:
    """``n`` datalist items naming no file."""
    return [{"name": f"case-{i}", "value": i + 2} for i in range(n)]


def chain(counter: str | Path, pause: float = 0.5, fail_first: bool = False) -> Compose:
    """The dataset's transform: the slow counted build alone (all of it cached)."""
    return Compose([SlowCountedBuild(str(counter), pause, fail_first)])


def write_claim(path: Path, host: str | None = None, pid: int | None = None, start: float | None = None) -> None:
    """A claim file as another process writes it (this host and process unless told)."""
    record = {"host": host or host_tag(), "pid": os.getpid() if pid is None else pid,
              "start": time.time() if start is None else start, "token": os.urandom(8).hex()}  # fmt: skip
    path.write_text(json.dumps(record), encoding="utf-8")


class _Count(logging.Handler):
    """Counts the records saying that the process waits for another's pre-processing."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.waits = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.waits += "waiting for another process's pre-processing" in record.getMessage()


def build_beside_others(args: tuple) -> dict:
    """One process of several filling one cache at once: waits until all ``n`` have started (a file each in
    ``ready``), then reads the items in ``order``; returns each item's image (as lists) by name and how many times
    it said that it waits."""
    from medgmae.data.cache import DiskCacheDataset

    data, order, cache_dir, counter, ready, n = args
    logger = logging.getLogger("medgmae.data")
    count = _Count()
    logger.addHandler(count)
    logger.setLevel(logging.INFO)
    Path(ready, str(os.getpid())).touch()
    deadline = time.monotonic() + 120
    while len(list(Path(ready).iterdir())) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    ds = DiskCacheDataset(data, chain(counter), cache_dir)
    images = {}
    for i in order:
        item = ds[i]
        images[item["name"]] = item["image"].tolist()
    return {"images": images, "waits": count.waits}
