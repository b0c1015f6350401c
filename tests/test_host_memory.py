"""The host's memory read in one place (:mod:`medgmae.host_memory`): the machine's physical memory, a cgroup's or
``RLIMIT_AS``'s smaller bound, and the checks that bound work by it (the in-memory ellipsoid mesh here; the phantom
shape in ``test_phantom_memory.py``)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import medgmae.host_memory as host_memory
from host_memory_helpers import MEMORY_LIMIT_CASES, patch_memory_limits
from medgmae.gaussians import Gaussians3D

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("v2, v1, rlimit, expected", MEMORY_LIMIT_CASES)
def test_the_limit_is_the_smallest_that_is_known(monkeypatch, tmp_path, v2, v1, rlimit, expected):
    patch_memory_limits(monkeypatch, tmp_path, 16 << 30, v2, v1, rlimit)
    assert host_memory.memory_limit() == expected


def test_no_known_limit_is_none(monkeypatch, tmp_path):
    patch_memory_limits(monkeypatch, tmp_path, None, "max\n", None, None)
    assert host_memory.memory_limit() is None


def test_the_address_space_limit_is_read(monkeypatch):
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda _: (3 << 30, resource.RLIM_INFINITY))
    assert host_memory._address_space_limit() == 3 << 30
    monkeypatch.setattr(resource, "getrlimit", lambda _: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert host_memory._address_space_limit() is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/meminfo is Linux's")
def test_the_physical_memory_is_the_kernels_total():
    """The kernel's ``MemTotal`` (kB of 1024 bytes) is the total the page count gives."""
    text = Path("/proc/meminfo").read_text(encoding="ascii")
    total = int(re.search(r"^MemTotal:\s+(\d+) kB$", text, flags=re.M).group(1)) * 1024
    assert host_memory.physical_memory() == total


def _gaussians(count: int) -> Gaussians3D:
    rng = np.random.default_rng(count)
    arrays = (rng.uniform(-5, 5, (count, 3)), rng.uniform(0.5, 2, (count, 3)), rng.normal(size=(count, 4)),
              rng.uniform(0.1, 1, count))  # fmt: skip
    return Gaussians3D(*(torch.from_numpy(a)[None] for a in arrays))


def test_the_in_memory_mesh_is_bounded_by_a_containers_limit(monkeypatch, tmp_path):
    """On a machine of 16 GiB in a cgroup of 1 MiB, the mesh of 16 Gaussians at level 3 (642 points of 52 bytes and
    1,280 triangles of 24 bytes each: 64,104 bytes a Gaussian, 1,025,664 in all) is built and 30 (1,923,120 bytes,
    1.83 MiB) are refused naming both sizes: the machine's memory alone passed them."""
    from medgmae.ellipsoids import ellipsoid_mesh

    patch_memory_limits(monkeypatch, tmp_path, 16 << 30, "1048576\n", None, None)
    assert len(ellipsoid_mesh(_gaussians(16), level=3).points) == 16 * 642
    with pytest.raises(ValueError, match=r"^the mesh of 30 Gaussians at level 3 takes 1\.83 MiB of arrays, more than "
                       r"the 1\.00 MiB of memory this process may use \(the machine's memory, or a cgroup or "
                       r"address-space limit\): give a lower level, or write it with save_ellipsoids"):  # fmt: skip
        ellipsoid_mesh(_gaussians(30), level=3)
    patch_memory_limits(monkeypatch, tmp_path, 16 << 30, "max\n", None, 1 << 20)  # RLIMIT_AS alike
    with pytest.raises(ValueError, match="more than the 1.00 MiB of memory"):
        ellipsoid_mesh(_gaussians(30), level=3)


def test_no_other_module_reads_the_hosts_memory():
    """The page count, the cgroup files and ``RLIMIT_AS`` are read in ``medgmae/host_memory.py`` only, so that every
    check bounds its work by the same limit."""
    readers = re.compile(r"SC_PHYS_PAGES|/sys/fs/cgroup|RLIMIT_AS|/proc/meminfo|psutil")
    found = [str(p.relative_to(ROOT)) for package in ("medgmae", "recon") for p in sorted((ROOT / package).rglob("*.py"))
             if p.name != "host_memory.py" and readers.search(p.read_text(encoding="utf-8"))]  # fmt: skip
    assert found == []
