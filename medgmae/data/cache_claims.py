"""One builder per cache file: processes sharing a cache folder pre-process each missing item once.

Jobs started together on one cluster with one ``cache_dir`` (fine-tuning at several label fractions and seeds,
several pre-trainings), and the ranks and data loader workers of one job, all want the same missing items of the
disk cache (:class:`medgmae.data.cache.DiskCacheDataset`) at first. Pre-processing a CT volume takes about 20 s of
CPU, so each process building every item itself spends that many times the CPU. Instead, a process that finds an
item's file missing first claims it (:func:`claimed`): it creates ``.<file name>.claim`` beside the file with
``O_CREAT | O_EXCL``, which one process alone succeeds in (local disks, NFS version 3 and later), and writes its
host, process id, start time and a random token into it (:func:`medgmae.temp_names.claim_writer` reads them); it
builds the item, writes its file (atomically) and removes the claim, also when the build fails. A process that
finds the claim taken waits, polling every :data:`POLL_SECONDS` (growing from 0.2 to 1 s), for the file to appear
and loads it; it says once per cache folder (INFO) that it waits for another process's pre-processing. It builds
the item itself instead when:

* the claim disappears without the file (its builder failed): it claims the item in turn;
* the claimant ran on this host and its process no longer runs (killed), or it is this very process but not one
  of its live claims (a killed process's id given to this one): at once;
* the claim is older than :data:`CLAIM_SECONDS` (30 minutes) by its start time, or this process has waited that
  long for the item: the claimant's process cannot be checked from another host, and a live builder of one volume
  takes seconds to a few minutes (20 s of CPU, more on a loaded node or a slow shared disk), so a claim that old is
  a killed process's (SIGKILL, a node lost) or a hung one's. The bound is what a killed builder on another host
  costs its waiters at most, once per claim: a shorter one would let a slow but live builder be duplicated, a longer
  one would keep jobs idle longer after a node's loss. A claim found already older (a job killed hours ago) is taken
  over at once.

Each thread of a process holds one claim at a time and never waits while holding one, so no process, and no set
of processes, waits on itself: a claim of another thread of this process is waited for as another process's. Two
waiters that take over one dead claim at the same moment may both build the item (each writes it whole; the second
replaces the first): the cost of a rare race is the duplicated work, never a damaged file. So is that of a builder
in another container under this host's name, whose process id this one cannot see: its claim is taken for a killed
process's, and its item built twice, as it was before claims.

A process ended by Ctrl-C or an error removes its claims (``finally``); SIGTERM (a batch system's time limit, the
data loader ending its workers) does too: while the main thread holds a claim, a SIGTERM handler removes this
process's claims and then does what the disposition it replaced would have done (ends the process, or runs the
run's own handler), and that disposition is put back when the claim ends (an ignored SIGTERM is left ignored).
A process killed outright (SIGKILL) leaves its claim, which waiters take over as above and which the next run's
start removes as a killed writer's temporary file (:func:`medgmae.temp_names.remove_dead_writers_files`). Where no
claim can be created (a read-only folder, another user's), the item is built unclaimed, as before (its write then
says why it fails).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from medgmae.temp_names import claim_name, claim_writer, host_tag, process_alive

__all__ = ["CLAIM_SECONDS", "POLL_SECONDS", "claim_path", "claimed"]

logger = logging.getLogger("medgmae.data")

#: A claim older than this (seconds, by its start time or by this process's wait) is taken over: see the module.
CLAIM_SECONDS = 30 * 60.0

#: The first and the longest pause between two looks at a claimed item (seconds).
POLL_SECONDS = (0.2, 1.0)

#: The claims this process holds: claim path -> token.
_HELD: dict[str, str] = {}
_LOCK = threading.Lock()
#: The SIGTERM disposition the claims' handler replaced, while it is installed.
_PREVIOUS: list[Any] = []
#: The cache folders whose waiting this process has said (once each), and those whose take-over it has said.
_SAID: set[tuple[str, str]] = set()
#: A claim that could not be created for another reason than being taken (the item is built unclaimed).
_UNCLAIMED = ""

if hasattr(os, "register_at_fork"):  # a forked child (a loader worker) holds none of its parent's claims
    os.register_at_fork(after_in_child=_HELD.clear)


def claim_path(target: str | os.PathLike) -> Path:
    """The claim file of the file ``target``: ``.<name>.claim`` beside it (:func:`medgmae.temp_names.claim_name`)."""
    target = Path(target)
    return target.with_name(claim_name(target.name))


@contextmanager
def claimed(target: str | os.PathLike, unusable: os.stat_result | None = None) -> Iterator[bool]:
    """Claim the building of ``target`` (see the module): wait while another live process builds it.

    Args:
        target: the file to be built (its folder must exist for a claim to be made).
        unusable: the status of a ``target`` that exists but cannot be used (to be built again), so that only
            another file there counts as built; ``None`` when there is none.

    Yields:
        ``True`` when this process is to build ``target`` (it holds the claim until the block ends, or holds none
        where none can be made); ``False`` when another process wrote ``target`` meanwhile: load it.
    """
    target = Path(target)
    marker = claim_path(target)
    token = _claim_or_wait(target, marker, unusable)
    if token is None:
        yield False
        return
    try:
        yield True
    finally:
        if token != _UNCLAIMED:
            _release(marker, token)


def _built(target: Path, unusable: os.stat_result | None) -> bool:
    """Whether ``target`` is a file other than the ``unusable`` one."""
    try:
        now = target.stat()
    except OSError:
        return False
    same = unusable is not None and (now.st_ino, now.st_size, now.st_mtime_ns) == (
        unusable.st_ino, unusable.st_size, unusable.st_mtime_ns)  # fmt: skip
    return not same


def _claim_or_wait(target: Path, marker: Path, unusable: os.stat_result | None) -> str | None:
    """This process's token once it holds the claim of ``target`` (:data:`_UNCLAIMED` where none can be made), or
    ``None`` once another process has written ``target``."""
    waiting_since, pause = time.monotonic(), POLL_SECONDS[0]
    while True:
        token = _try_claim(marker)
        if token is not None:
            if token != _UNCLAIMED and _built(target, unusable):  # written between our look and our claim
                _release(marker, token)
                return None
            return token
        if _built(target, unusable):
            return None
        writer = claim_writer(marker)
        if _abandoned(marker, writer, time.monotonic() - waiting_since):
            _say_once("took over", target.parent, writer)
            if not _remove_if_unchanged(marker, writer):  # not ours to remove (another user's folder)
                return _UNCLAIMED
            continue
        _say_once("waiting", target.parent, writer)
        time.sleep(pause)
        pause = min(pause * 1.5, POLL_SECONDS[1])


def _abandoned(marker: Path, writer: dict | None, waited: float) -> bool:
    """Whether the claim ``marker`` (its writer's record ``writer``) is one no live process will complete: its
    process is gone from this host, or it is older than :data:`CLAIM_SECONDS` (or waited on that long)."""
    if waited >= CLAIM_SECONDS:
        return True
    if writer is None:  # being written (microseconds), or gone: judged by its age alone
        try:
            return time.time() - marker.stat().st_mtime >= CLAIM_SECONDS
        except OSError:
            return False
    if time.time() - float(writer["start"]) >= CLAIM_SECONDS:
        return True
    if writer["host"] != host_tag():
        return False
    if writer["pid"] == os.getpid():  # ours only while one of this process's live claims
        with _LOCK:
            return _HELD.get(str(marker)) != writer["token"]
    return not process_alive(writer["pid"])


def _try_claim(marker: Path) -> str | None:
    """Create the claim ``marker`` for this process: its token; ``None`` when another holds it; :data:`_UNCLAIMED`
    when none can be made (a read-only folder, another user's, a full disk)."""
    token = uuid.uuid4().hex
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return None
    except OSError:
        return _UNCLAIMED
    with _LOCK:
        _HELD[str(marker)] = token
    record = {"host": host_tag(), "pid": os.getpid(), "start": time.time(), "token": token}
    try:
        os.write(fd, json.dumps(record).encode())
    except OSError:
        _forget(marker, token)
        marker.unlink(missing_ok=True)
        return _UNCLAIMED
    finally:
        os.close(fd)
    _guard_sigterm()
    return token


def _release(marker: Path, token: str) -> None:
    """Remove this process's claim ``marker`` (holding ``token``; one another process took over is left)."""
    _forget(marker, token)
    _remove_if_unchanged(marker, {"token": token})
    with _LOCK:
        idle = not _HELD
    if idle:
        _unguard_sigterm()


def _forget(marker: Path, token: str) -> None:
    """``marker`` is no longer one of this process's claims."""
    with _LOCK:
        if _HELD.get(str(marker)) == token:
            del _HELD[str(marker)]


def _remove_if_unchanged(marker: Path, writer: dict | None) -> bool:
    """Remove ``marker`` when it still holds ``writer``'s claim (the same token; ``None``: still no record).

    Returns:
        ``False`` when it holds that claim still and cannot be removed (another user's folder), else ``True``.
    """
    now = claim_writer(marker)
    if (now is None) if writer is None else (now is not None and now["token"] == writer["token"]):
        try:
            marker.unlink(missing_ok=True)
        except OSError:
            return False
    return True


def _say_once(what: str, folder: Path, writer: dict | None) -> None:
    """Say, once per process and cache folder, that this process waits for another's pre-processing or takes
    over an abandoned claim."""
    if (what, str(folder)) in _SAID:
        return
    _SAID.add((what, str(folder)))
    who = f"process {writer['pid']} on {writer['host']}" if writer else "another process"
    if what == "waiting":
        logger.info("waiting for another process's pre-processing in the cache folder %s (%s, e.g.): each volume is "
                    "pre-processed once by the jobs sharing it", folder, who)  # fmt: skip
    else:
        logger.info("pre-processing volumes in the cache folder %s that a process no longer running or a claim "
                    "over %.0f minutes old had claimed (%s, e.g.)", folder, CLAIM_SECONDS / 60, who)  # fmt: skip


def _guard_sigterm() -> None:
    """While the main thread holds claims, SIGTERM removes them first (:func:`_on_sigterm`)."""
    if threading.current_thread() is not threading.main_thread() or _PREVIOUS:
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous in (None, signal.SIG_IGN) or previous is _on_sigterm:  # set outside Python, or SIGTERM ends nothing
        return
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):
        return
    _PREVIOUS.append(previous)


def _unguard_sigterm() -> None:
    """Put back the SIGTERM disposition :func:`_guard_sigterm` replaced."""
    if threading.current_thread() is not threading.main_thread() or not _PREVIOUS:
        return
    if signal.getsignal(signal.SIGTERM) is _on_sigterm:
        signal.signal(signal.SIGTERM, _PREVIOUS[-1])
    _PREVIOUS.clear()


def _on_sigterm(signum: int, frame: Any) -> None:
    """Remove this process's claims, put back the replaced disposition and send SIGTERM again: it ends the process
    (the default) or runs the replaced handler."""
    with _LOCK:
        held = list(_HELD.items())
        _HELD.clear()
    for marker, token in held:
        _remove_if_unchanged(Path(marker), {"token": token})
    previous = _PREVIOUS.pop() if _PREVIOUS else signal.SIG_DFL
    _PREVIOUS.clear()
    signal.signal(signal.SIGTERM, previous)
    os.kill(os.getpid(), signum)  # again, to the replaced disposition: the default ends the process, a handler runs
