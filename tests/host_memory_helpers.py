"""Memory readers of :mod:`medgmae.host_memory` made to say what a test needs: the machine's physical memory, the
texts of the cgroup limit files and ``RLIMIT_AS``."""

from __future__ import annotations

import medgmae.host_memory as host_memory


# (cgroup v2 text, cgroup v1 text, RLIMIT_AS, the limit expected) on a machine of 16 GiB
MEMORY_LIMIT_CASES = [
    ("max\n", "4294967296\n", None, 4 << 30),  # cgroup v1
    ("2147483648\n", None, None, 2 << 30),  # cgroup v2
    ("2147483648\n", "9223372036854771712\n", 1 << 30, 1 << 30),  # RLIMIT_AS the smallest; v1's "no limit"
    ("max\n", "not a number", None, 16 << 30),  # none: the physical memory
    (None, None, None, 16 << 30),
]  # fmt: skip


def patch_memory_limits(monkeypatch, tmp_path, physical, v2, v1, rlimit) -> None:
    """Patch the memory readers: ``physical`` and ``rlimit`` in bytes (``None``: not known), ``v2``/``v1`` the texts
    of the cgroup v2 and v1 limit files (``None``: no such file), written under ``tmp_path``."""
    files = []
    for name, text in (("memory.max", v2), ("memory.limit_in_bytes", v1)):
        files.append(str(tmp_path / name))
        if text is not None:
            (tmp_path / name).write_text(text)
    monkeypatch.setattr(host_memory, "physical_memory", lambda: physical)
    monkeypatch.setattr(host_memory, "CGROUP_MEMORY_FILES", tuple(files))
    monkeypatch.setattr(host_memory, "_address_space_limit", lambda: rlimit)
