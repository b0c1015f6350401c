"""The host's memory as this process may use it: the machine's physical memory (:func:`physical_memory`) and the
smaller bound a container or the shell may set (:func:`memory_limit`: a control group's limit, ``RLIMIT_AS``).

Every check of work against the host's memory reads it here: the phantom generator's shape check
(:func:`medgmae.data.phantom.generator.shape_memory_problem`) and the in-memory ellipsoid mesh
(:func:`medgmae.ellipsoids.ellipsoid_mesh`). Plain standard-library reads: any module may import this at its top.
"""

from __future__ import annotations

import os

__all__ = ["CGROUP_MEMORY_FILES", "physical_memory", "memory_limit"]

#: Files holding the memory limit of this process's control group: cgroup v2, then v1.
CGROUP_MEMORY_FILES = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def physical_memory() -> int | None:
    """The machine's physical memory in bytes (``None`` where the system does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):  # not a POSIX system, or the names are unknown
        return None


def _cgroup_limit(path: str) -> int | None:
    """The byte count in a cgroup memory-limit file, or ``None`` for ``max`` (no limit), other text, or a file that
    cannot be read."""
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
    except (OSError, ValueError):
        return None
    return int(text) if text.isdigit() else None


def _address_space_limit() -> int | None:
    """This process's soft ``RLIMIT_AS`` in bytes, or ``None`` when unlimited or not known."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, AttributeError, OSError, ValueError):  # not a POSIX system
        return None
    return None if soft == resource.RLIM_INFINITY or soft < 0 else int(soft)


def memory_limit() -> int | None:
    """The memory this process may use, in bytes: the smallest of the machine's physical memory, the cgroup's
    limit (:data:`CGROUP_MEMORY_FILES`) and ``RLIMIT_AS``, those that are known; ``None`` when none is."""
    limits = [physical_memory(), *(_cgroup_limit(p) for p in CGROUP_MEMORY_FILES), _address_space_limit()]
    return min((n for n in limits if n), default=None)
