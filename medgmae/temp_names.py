"""The temporary files of atomic writes (:func:`medgmae.files.atomic_write`) and the staging folders of sets of
outputs (:func:`medgmae.files.staged_outputs`), named after their writer: ``.tmp-<host>.<pid>-<12 hex>-<name>``,
``.<name>.staging-<host>.<pid>-<8>``; a name too long for that is shortened (:func:`fitted_name`) to fit the file
system's :data:`NAME_BYTES`, as are the names the toolkit makes from its inputs' names.

A write killed before its rename (SIGKILL, a batch system's time limit) leaves its temporary file or staging folder,
and a builder of a cache file killed while it builds leaves its claim (``.<name>.claim``, :func:`claim_name`, holding
its host and process id: :mod:`medgmae.data.cache_claims`).
In a folder that one run owns, the next run removes such files (:func:`remove_interrupted_writes`); in a folder
shared by runs (``reconstruct --matrix-dir``, the pre-processing cache, a command-line tool's output:
:func:`remove_dead_writes_of`) another run may be writing one, so a file is removed only when its name says that it
was written on this host by a process that is no longer running, or when it has not changed for
:data:`STALE_SECONDS` whoever wrote it (:func:`remove_dead_writers_files`): the writer of a
container's main process (process id 1, alive in every PID namespace) or of a container with a host name of its own
(Docker's default) is never told dead by its name. Light on purpose: the standard library only.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path

__all__ = ["CLAIM_NAME", "HOST_CHARS", "NAME_BYTES", "RECENT_SECONDS", "REMOVED_BECAUSE", "STAGING_NAME",
           "STALE_SECONDS", "TEMP_NAME", "WRITER", "claim_name", "claim_writer", "fitted_name", "host_tag",
           "process_alive", "remove_dead_writers_files", "remove_dead_writes_of", "remove_interrupted_writes",
           "shortened_from", "staging_prefix", "temp_name"]

#: The writer part of a temporary name, ``<host>.<pid>-`` (:func:`host_tag`, the process id), as a pattern.
WRITER = r"(?P<host>[A-Za-z0-9.-]+?)\.(?P<pid>\d+)-"

#: A temporary name: its writer (:data:`WRITER`), 12 random hex digits, the final file name.
TEMP_NAME = re.compile(rf"^\.tmp-{WRITER}[0-9a-f]{{12}}-(?P<name>.+)$")

#: A staging folder of :func:`medgmae.files.staged_outputs`: the folder it fills (``name``), its writer
#: (:data:`WRITER`), the 8 characters ``tempfile.mkdtemp`` adds.
STAGING_NAME = re.compile(rf"^\.(?P<name>.+)\.staging-{WRITER}[a-z0-9_]{{8}}$")

#: The claim of a file being built (:mod:`medgmae.data.cache_claims`): ``.<name>.claim``, one name per file so that
#: one process alone creates it (``O_EXCL``); its writer (host, process id, start) is its content
#: (:func:`claim_writer`).
CLAIM_NAME = re.compile(r"^\.(?P<name>.+)\.claim$")

#: The longest file name the usual file systems take (``NAME_MAX``), in bytes.
NAME_BYTES = 255

#: A file ending kept when a name is shortened (``.nii.gz``, ``.pt``): up to two dot-parts of 1-8 letters or digits.
_ENDING = re.compile(r"(\.[A-Za-z0-9]{1,8}){0,2}$")

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


def _bytes(text: str) -> int:
    """How many bytes ``text`` takes as a file name (the file system's encoding)."""
    return len(os.fsencode(text))


def _digest(name: str) -> str:
    """8 hex digits of the SHA-1 of ``name``: what tells shortened names apart."""
    return hashlib.sha1(os.fsencode(name)).hexdigest()[:8]


def fitted_name(name: str, end: str = "", limit: int = NAME_BYTES) -> str:
    """``name + end`` where it takes at most ``limit`` bytes; else the start of ``name`` (whole characters), ``-``
    and 8 hex digits of the SHA-1 of the whole ``name``, then ``end``, in ``limit`` bytes: a name made from an input's
    name (``<input>_seg.nii.gz``) fits the file system, and those of different inputs stay apart.

    Args:
        name: the part that may be shortened (e.g. an input's file name without its ending).
        end: the part kept whole (e.g. ``"_seg.nii.gz"``).
        limit: the most bytes the result may take (:data:`NAME_BYTES`, less a prefix added to it).

    Returns:
        The name, at most ``limit`` bytes long.
    """
    if not isinstance(name, str) or not isinstance(end, str):
        raise TypeError(f"fitted_name: name and end must be strings, got {type(name).__name__}, {type(end).__name__}")
    if _bytes(name + end) <= limit:
        return name + end
    tail = f"-{_digest(name)}{end}"
    room = limit - _bytes(tail)
    if room < 0:
        raise ValueError(f"fitted_name: limit {limit} leaves no room for the ending {end!r} and a hash")
    head = name[:room]  # each character takes a byte at least
    while _bytes(head) > room:
        head = head[:-1]
    return head + tail


def shortened_from(short: str, name: str) -> bool:
    """Whether ``short`` is ``name`` as :func:`fitted_name` shortens it, its ending (``.nii.gz``) kept whole or not."""
    ending = _ENDING.search(name).group(0)
    for end in dict.fromkeys((ending, "")):
        whole = name[: len(name) - len(end)]
        tail = f"-{_digest(whole)}{end}"
        if short.endswith(tail) and whole.startswith(short[: len(short) - len(tail)]):
            return True
    return False


def temp_name(name: str) -> str:
    """A temporary name for a file to be renamed to ``name``, carrying this host and process (:data:`TEMP_NAME`); in
    :data:`NAME_BYTES`, ``name`` shortened where needed (:func:`fitted_name`; its ending, ``.nii.gz``, kept)."""
    prefix = f".tmp-{host_tag()}.{os.getpid()}-{uuid.uuid4().hex[:12]}-"
    end = _ENDING.search(name).group(0)
    return prefix + fitted_name(name[: len(name) - len(end)], end, NAME_BYTES - _bytes(prefix))


def staging_prefix(name: str) -> str:
    """The start of the name of a staging folder for the folder ``name`` (``tempfile.mkdtemp`` adds 8 characters),
    carrying this host and process (:data:`STAGING_NAME`); in :data:`NAME_BYTES` with those 8, ``name`` shortened
    where needed (:func:`fitted_name`)."""
    writer = f".staging-{host_tag()}.{os.getpid()}-"
    return f".{fitted_name(name, '', NAME_BYTES - 9 - _bytes(writer))}{writer}"


def claim_name(name: str) -> str:
    """The name of the claim of the file ``name`` (:data:`CLAIM_NAME`), in :data:`NAME_BYTES` (``name`` shortened
    where needed, :func:`fitted_name`)."""
    return f".{fitted_name(name, '', NAME_BYTES - 7)}.claim"


def claim_writer(path: str | os.PathLike) -> dict | None:
    """The writer a claim file names: ``{"host", "pid", "start", "token"}`` (:func:`host_tag`, the process id, its
    ``time.time()`` at the claim, a random text telling two claims of one process apart), or ``None`` when the file
    is gone or holds no such record (being written, cut short)."""
    try:
        with open(path, encoding="utf-8") as f:
            record = json.loads(f.read(4096))
    except (OSError, ValueError):
        return None
    kinds = {"host": str, "pid": int, "start": (int, float), "token": str}
    if not isinstance(record, dict) or not all(isinstance(record.get(k), t) for k, t in kinds.items()):
        return None
    return record


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


def remove_dead_writers_files(folder: str | os.PathLike, names: str = "*", *, name: str | None = None) -> list[Path]:
    """Remove, directly inside ``folder``, the temporary files (:data:`TEMP_NAME`), staging folders
    (:data:`STAGING_NAME`) and claims (:data:`CLAIM_NAME`, their writer in their content) of writers that were
    killed: those written on this host by a process that no longer runs and unchanged for :data:`RECENT_SECONDS`,
    and those unchanged for :data:`STALE_SECONDS` whatever their host and process (a container's writer); a staging
    folder changes as long as anything in it does. Newer ones of live writers and of other hosts, names without a
    writer (older versions) and claims holding no writer's record are left as they are; a message naming
    what was removed says why with :data:`REMOVED_BECAUSE`.

    Args:
        folder: a folder shared by runs (nothing happens when it does not exist).
        names: a glob the final file (or folder) names must match (e.g. ``"projector_matrix-*.pt"``).
        name: instead of ``names``, the one final name they must have, as it is or shortened (:func:`fitted_name`).

    Returns:
        What was removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    host, now, removed = host_tag(), time.time(), []
    for path in sorted(folder.iterdir()):
        found = TEMP_NAME.match(path.name) or STAGING_NAME.match(path.name) or CLAIM_NAME.match(path.name)
        if found is None or not (fnmatch.fnmatchcase(found["name"], names) if name is None else
                                 found["name"] == name or shortened_from(found["name"], name)):
            continue
        try:
            staging = found.re is STAGING_NAME
            if path.is_symlink() or not (path.is_dir() if staging else path.is_file()):
                continue
            age = now - (_newest_change(path) if staging else path.stat().st_mtime)
            writer = claim_writer(path) if found.re is CLAIM_NAME else found.groupdict()
            if writer is None:  # a file named as a claim that holds none: not the toolkit's, or being written
                continue
            dead = writer["host"] == host and age >= RECENT_SECONDS and not process_alive(int(writer["pid"]))
            if not (dead or age >= STALE_SECONDS):
                continue
            shutil.rmtree(path) if staging else path.unlink()
        except OSError:  # removed by another run first, or not ours to remove (another user's, a read-only folder)
            continue
        removed.append(path)
    return removed


def _newest_change(folder: Path) -> float:
    """The latest modification time of ``folder`` and of anything below it (links not followed)."""
    newest = folder.lstat().st_mtime
    for root, dirs, files in os.walk(folder):
        for name in (*dirs, *files):
            try:
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
            except OSError:  # removed meanwhile
                pass
    return newest


def remove_dead_writes_of(output: str | os.PathLike, folder: bool) -> str | None:
    """Remove what killed writers left of a command-line tool's output (:func:`remove_dead_writers_files`): for an
    output file, its temporary files in its folder; for an output folder, in it and its staging folders beside it
    (``.<name>.staging-*``). Call it at the tool's start: several runs may share these folders, and a live writer's
    files stay.

    Args:
        output: the output file or folder given.
        folder: whether ``output`` is a folder.

    Returns:
        The one line saying what was removed, or ``None`` when nothing was.
    """
    output = Path(output)
    if folder:
        removed = remove_dead_writers_files(output) + remove_dead_writers_files(output.parent, name=output.name)
    else:
        removed = remove_dead_writers_files(output.parent, name=output.name)  # other outputs' are theirs to clear
    if not removed:
        return None
    said = "1 killed write" if len(removed) == 1 else f"{len(removed)} killed writes"
    return f"removed what {said} left of {output}: {', '.join(map(str, removed))} ({REMOVED_BECAUSE})"


#: What a writer killed mid-write (SIGKILL, power loss) leaves, by the exact names the toolkit makes:
#: :func:`medgmae.files.atomic_write`'s temporary files (``.tmp-<host>.<pid>-<12 hex>-<name>``, and
#: ``.tmp-<12 hex>-<name>`` of earlier versions; files only) and the ``tempfile.mkdtemp`` folders of
#: :func:`medgmae.files.staged_outputs` (``.<name>.staging-<host>.<pid>-<8>``, and ``.<name>.staging-<8>`` of earlier
#: versions), and the ``.best-<8>`` folders earlier versions wrote the pre-training's best model in.
_LEFTOVER_FILE = re.compile(rf"^\.tmp-({WRITER})?[0-9a-f]{{12}}-[^/]+"
                            r"\.(pt|json|gz|nii|png|md|csv|ts|ply|npy|txt)$")
_LEFTOVER_DIR = re.compile(rf"^(\.[^/]+\.staging-({WRITER})?|\.best-)[a-z0-9_]{{8}}$")


def remove_interrupted_writes(folder: str | os.PathLike) -> list[Path]:
    """Remove, directly inside ``folder``, the temporary files and staging folders of writes that were killed before
    they finished (a clean error removes its own); call it where no writer of ``folder`` can be running (a training
    run's start). A checkpoint being written when the process was killed can be gigabytes.

    Returns:
        What was removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = sorted(p for p in folder.iterdir() if not p.is_symlink() and (
        (p.is_file() and _LEFTOVER_FILE.match(p.name)) or (p.is_dir() and _LEFTOVER_DIR.match(p.name))))  # fmt: skip
    for p in found:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return found
