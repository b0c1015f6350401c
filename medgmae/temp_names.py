"""The temporary files of atomic writes (:func:`medgmae.files.atomic_write`), named after their writer:
``.tmp-<host>.<pid>-<12 hex>-<name>``.

A write killed before its rename (SIGKILL, a batch system's time limit) leaves its temporary file. In a folder that
one run owns, the next run removes such files (:func:`medgmae.files.remove_interrupted_writes`); in a folder shared
by runs (``reconstruct --matrix-dir``, the pre-processing cache) another run may be writing one, so a file is
removed only when its name says that it was written on this host by a process that is no longer running, or when it
has not changed for :data:`STALE_SECONDS` whoever wrote it (:func:`remove_dead_writers_files`): the writer of a
container's main process (process id 1, alive in every PID namespace) or of a container with a host name of its own
(Docker's default) is never told dead by its name. Light on purpose: the standard library only.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import socket
import time
import uuid
from pathlib import Path

__all__ = ["HOST_CHARS", "RECENT_SECONDS", "REMOVED_BECAUSE", "STALE_SECONDS", "TEMP_NAME", "WRITER", "host_tag",
           "process_alive", "remove_dead_writers_files", "temp_name"]

#: The writer part of a temporary name, ``<host>.<pid>-`` (:func:`host_tag`, the process id), as a pattern.
WRITER = r"(?P<host>[A-Za-z0-9.-]+?)\.(?P<pid>\d+)-"

#: A temporary name: its writer (:data:`WRITER`), 12 random hex digits, the final file name.
TEMP_NAME = re.compile(rf"^\.tmp-{WRITER}[0-9a-f]{{12}}-(?P<name>.+)$")

#: The most characters of the host name a temporary name carries (:func:`host_tag`).
HOST_CHARS = 32

#: A temporary file changed less than this many seconds ago is never removed: a process of another PID namespace
#: with this host's name (a container) may be writing it under a process id that is free here.
RECENT_SECONDS = 60.0

#: A temporary file unchanged for this many seconds (a day) is removed whatever its host and process: no live writer
#: leaves it so long. A writer of :func:`medgmae.files.atomic_write` writes its temporary file from start to end
#: (``torch.save`` of a cache entry, ~75 MB; of a projector matrix, ~450 MiB), which changes its modification time
#: as it goes, and renames it when done, within minutes; the file's host and process cannot tell a killed writer
#: from a live one in a container (process id 1 is alive in every PID namespace; a container's own host name is
#: never this host's), so without this bound such a file would stay for ever.
STALE_SECONDS = 24 * 3600.0

#: Why :func:`remove_dead_writers_files` removed what it removed, for the message that names the files.
REMOVED_BECAUSE = (f"their writer no longer runs on this host, or they were unchanged for "
                   f"{STALE_SECONDS / 3600:.0f} hours")


def host_tag() -> str:
    """This host's name as temporary names carry it: letters, digits, dots and hyphens (others as ``-``), at most
    :data:`HOST_CHARS` characters, so that the temporary name of a long file name still fits the file system's 255
    (a longer name keeps its start and ends in 8 hex digits of its hash, so two hosts stay apart); ``"localhost"``
    when the host has no name."""
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()) or "localhost"
    if len(host) <= HOST_CHARS:
        return host
    digest = hashlib.sha1(socket.gethostname().encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{host[: HOST_CHARS - 9]}-{digest}"


def temp_name(name: str) -> str:
    """A temporary name for a file to be renamed to ``name``, carrying this host and process (:data:`TEMP_NAME`)."""
    return f".tmp-{host_tag()}.{os.getpid()}-{uuid.uuid4().hex[:12]}-{name}"


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (signal 0 is sent: nothing is delivered). ``True`` where that
    cannot be told (another user's process; Windows, where ``os.kill`` would end it)."""
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError):  # no process can have that id
        return False
    return True


def remove_dead_writers_files(folder: str | os.PathLike, names: str = "*") -> list[Path]:
    """Remove, directly inside ``folder``, the temporary files (:data:`TEMP_NAME`) of writers that were killed: those
    written on this host by a process that no longer runs and unchanged for :data:`RECENT_SECONDS`, and those
    unchanged for :data:`STALE_SECONDS` whatever their host and process (a container's writer). Newer files of live
    writers and of other hosts, and temporary names without a writer (older versions) are left as they are; a
    message naming what was removed says why with :data:`REMOVED_BECAUSE`.

    Args:
        folder: a folder shared by runs (nothing happens when it does not exist).
        names: a glob the final file names must match (e.g. ``"projector_matrix-*.pt"``).

    Returns:
        What was removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    host, now, removed = host_tag(), time.time(), []
    for path in sorted(folder.iterdir()):
        found = TEMP_NAME.match(path.name)
        if found is None or not fnmatch.fnmatchcase(found["name"], names):
            continue
        try:
            if path.is_symlink() or not path.is_file():
                continue
            age = now - path.stat().st_mtime
            dead = found["host"] == host and age >= RECENT_SECONDS and not process_alive(int(found["pid"]))
            if not (dead or age >= STALE_SECONDS):
                continue
            path.unlink()
        except OSError:  # removed by another run first, or not ours to remove (another user's, a read-only folder)
            continue
        removed.append(path)
    return removed
