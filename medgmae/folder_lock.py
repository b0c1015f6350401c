"""One run at a time in an output folder.

Two runs writing one folder (a job submitted twice, an array job given one ``--output_dir``, a second terminal)
each finish "successfully" while the folder ends up holding a mix of their files: one run's checkpoints under the
other's ``model.pt``, two TensorBoard logs, phantoms of two seeds under one ``dataset.json``. A run therefore holds
an advisory lock on its output folder itself (``flock`` on the folder's descriptor: no lock file is left in it, and
the lock goes with the process however it ends, SIGKILL included; children it forks do not keep it), and a second
run into the folder is refused, naming the process that holds it where this host can tell (``/proc/locks``).
A command that asks to (``medgmae-phantom``: ``--wait-seconds``) waits for the holder instead, up to a bound, with
a line when it starts waiting and one every :data:`medgmae.terminal.LINE_SECONDS` after: a job array whose tasks
all make one dataset before training then finds it made (the training runs themselves are refused at once).
A folder a command created is removed when the command ends with it empty (failed or interrupted before it wrote
anything there); one that existed is never removed. :func:`folder_made` does this alone, without a lock, for a
command that writes one file into a folder that other runs may share (``medgmae-recon fbp --out``, the matrix
of ``reconstruct --matrix-dir``).

Where it holds: the training bundles' ``output_dir`` (of a ``python -m monai.bundle`` command line, to its exit; of
a bundle run from Python, ``monai.bundle.run`` in a notebook, while the workflow's run goes on,
:func:`hold_until_ended`; under torchrun rank 0 holds it once the process group exists, :func:`hold_run_folder`, so
that every rank stops on a refusal), the folder an evaluation or inference bundle writes into (``--eval_dir``,
``--inference_dir``, ``--seg_dir``) and the folder of an export's ``--export_path`` (all through
:func:`medgmae.bundle_checks.check_settings`), the run folder that a GViT evaluation writes the default phantom task
into (for the writing), ``medgmae-recon reconstruct`` and ``simulate``'s ``--out``, ``medgmae-phantom --out``,
``medgmae-2d``'s ``--out``. Which process holds a folder can be asked without taking its lock
(:func:`folder_holder`): an evaluation warns of a training run still writing the folder of the ``best_model.pt``
it reads.

Reach: runs on one host always exclude each other. Across hosts it depends on the file system's ``flock`` of a
folder: NFS takes it as a lock of the client host alone (runs on two nodes sharing an NFS folder are not kept
apart, and nothing says so), parallel file systems (Lustre, GPFS) as their configuration makes it. A system without
``flock`` (Windows) gets no guard. No ignite or MONAI imports.
"""

from __future__ import annotations

import atexit
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from medgmae import terminal
from medgmae.bundle_errors import InputRefusal

try:
    import fcntl
except ImportError:  # Windows: no flock, no guard
    fcntl = None

__all__ = ["FolderInUse", "hold_folder", "hold_run_folder", "hold_until_ended", "folder_held", "folder_made", "release_folder",
           "folder_holder"]

logger = logging.getLogger("medgmae")

#: The folders this process holds: real path -> the locked descriptor.
_HELD: dict[str, int] = {}


class FolderInUse(InputRefusal):
    """An output folder that another live run holds (:func:`hold_folder`)."""


def hold_folder(folder: str | os.PathLike, flag: str = "--output_dir") -> None:
    """Hold ``folder`` for this process until it ends (or :func:`release_folder`), creating it if needed; again for a
    folder this process holds already is a no-op.

    A folder this call created is removed at exit if it is then still empty (a run refused after its settings were
    checked leaves no trace). A folder that cannot be created or opened is not held: the caller's own check of it
    names the problem.

    Args:
        folder: the output folder.
        flag: the setting that named it, for the refusal.

    Raises:
        FolderInUse: another process holds it; the message names the folder, the flag and, where this host can tell,
            that process.
    """
    if created := _lock(folder, flag):
        atexit.register(_remove_if_empty, Path(_key(folder)), created)


def hold_run_folder(folder: str | os.PathLike, flag: str = "--output_dir") -> None:
    """:func:`hold_folder` by rank 0 of a multi-process run, once its process group exists: when rank 0 cannot hold
    it, every rank stops with :class:`FolderInUse` (:func:`medgmae.distributed.main_process_only`; the others waited
    in the process group's start for a rank 0 that had left, until torchrun killed them)."""
    from medgmae.distributed import main_process_only

    main_process_only(lambda: hold_folder(folder, flag), FolderInUse)


def release_folder(folder: str | os.PathLike) -> None:
    """Let ``folder`` go (a command of a long-lived process, as the tools' ``main`` in tests, that has ended)."""
    fd = _HELD.pop(_key(folder), None)
    if fd is not None:
        os.close(fd)


#: Seconds between two tries at a folder's lock while waiting for its holder (:func:`folder_held` ``wait``).
WAIT_POLL_SECONDS = 0.5


@contextmanager
def folder_held(
    folder: str | os.PathLike, flag: str = "--out", wait: float = 0.0, say: Callable[[str], object] | None = None,
) -> Iterator[Path | None]:  # fmt: skip
    """Hold ``folder`` (:func:`hold_folder`) for the block, removing it after if the block created it and left it
    empty (before letting it go: a run waiting for it never locks a folder about to be removed); a folder held
    before the block stays held after it.

    Args:
        folder: the output folder.
        flag: the setting that named it, for the refusal and the waiting lines.
        wait: seconds to wait for another process holding it to let it go (0: refused at once). Waiting says so in
            one line, then every :data:`medgmae.terminal.LINE_SECONDS`; Ctrl-C (or SIGTERM raising) ends it.
        say: prints one waiting line; default ``print`` to stdout, flushed.

    Yields:
        The outermost folder this call created (``folder`` or a parent), ``None`` when it existed.

    Raises:
        FolderInUse: another process holds it (still, after ``wait`` seconds).
    """
    if not (isinstance(wait, (int, float)) and not isinstance(wait, bool) and wait >= 0):
        raise ValueError(f"wait: expected a number of seconds >= 0, got {wait!r}")
    created, end = _hold_to_end(folder, flag, _Wait(wait, say))
    try:
        yield created
    finally:
        end()


def hold_until_ended(folder: str | os.PathLike, flag: str = "--output_dir") -> Callable[[], None]:
    """Hold ``folder`` (:func:`hold_folder`) for a run that ends before its process does (a bundle run from Python,
    in a notebook); returns the function that ends the hold as :func:`folder_held` does at the end of its block.

    Args:
        folder: the output folder.
        flag: the setting that named it, for the refusal.

    Returns:
        ``end()``: removes the folders this call created if they are empty, then lets ``folder`` go (unless this
        process held it before).

    Raises:
        FolderInUse: another process holds it.
    """
    return _hold_to_end(folder, flag)[1]


def _hold_to_end(folder: str | os.PathLike, flag: str, wait: _Wait | None = None) -> tuple[Path | None, Callable[[], None]]:
    """Hold ``folder``: the outermost folder this call created, and the function that ends the hold (removing the
    folders created if empty, before letting it go: a run waiting for it never locks a folder about to be removed;
    a folder held before stays held)."""
    held = _key(folder) in _HELD
    created = _lock(folder, flag, wait)

    def end() -> None:
        if created:
            _remove_if_empty(Path(_key(folder)), created)
        if not held:
            release_folder(folder)

    return created, end


@contextmanager
def folder_made(folder: str | os.PathLike) -> Iterator[Path | None]:
    """Create ``folder`` (and its missing parents) for the block, and remove those it created if the block leaves
    them empty (a write that failed, Ctrl-C); nothing is held (:func:`folder_held` also holds it). A folder that
    existed before, or that holds a file after the block, is kept.

    Args:
        folder: the folder an output file is written into.

    Yields:
        The outermost folder this call created (``folder`` or a parent), ``None`` when ``folder`` existed.

    Raises:
        OSError: ``folder`` cannot be created (below a file, read-only).
    """
    path = Path(_key(folder))
    created = _make(path)
    try:
        yield created
    finally:
        if created:
            _remove_if_empty(path, created)


def _key(folder: str | os.PathLike) -> str:
    """The folder's real path (links and ``..`` resolved: one folder, one key)."""
    return os.path.realpath(Path(folder).expanduser())


def _lock(folder: str | os.PathLike, flag: str, wait: _Wait | None = None) -> Path | None:
    """Take ``folder``'s lock for this process (:func:`hold_folder`), waiting for another holder as ``wait`` says
    (none: refused at once); the outermost folder this call created, if any (``folder`` or one of its parents)."""
    key = _key(folder)
    if key in _HELD or fcntl is None:
        return None
    path = Path(key)
    try:
        created = _make(path)
    except OSError:  # below a file, read-only, a name too long: the caller's check of the folder says so
        return None
    for _ in range(3):  # a folder removed by its last holder between our open and our lock: open it again
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError:
            return None
        if not _locked(fd, path, flag, wait):
            return created
        if _same_file(fd, path):
            _HELD[key] = fd
            return created
        os.close(fd)
        try:  # made again here (the run waited for failed and removed it): then this call created it
            created = created or _make(path)
        except OSError:
            return None
    return created


def _make(path: Path) -> Path | None:
    """Create ``path`` and its missing parents, one level at a time; the outermost folder this call created (one
    another process made meanwhile is not counted: removing it could pull it from under that process's write),
    ``None`` when it created none."""
    created = None
    for _ in range(3):  # a parent another process made and removed again meanwhile: the missing levels anew
        try:
            for folder in reversed([p for p in (path, *path.parents) if not p.exists()]):
                try:
                    folder.mkdir()
                except FileExistsError:
                    continue
                created = created or folder
            break
        except FileNotFoundError:
            continue
    path.mkdir(parents=True, exist_ok=True)  # the error for a path below a file, or a file at ``path``
    return created


def _locked(fd: int, path: Path, flag: str, wait: _Wait | None = None) -> bool:
    """``flock`` ``fd`` (the folder at ``path``), waiting for another holder as ``wait`` says; ``False`` (``fd``
    closed) on a file system without it, and :class:`FolderInUse` when another process holds it."""
    try:
        (wait or _Wait(0.0)).flock(fd, path, flag)
    except BlockingIOError as e:
        os.close(fd)  # a folder this call created is another run's now: never removed here
        raise FolderInUse(f"{flag} {path}: another run is writing into it{_holder(path)}; give another {flag}, or "
                          f"run this one when that run has ended{e.args[0] if e.args else ''}") from None  # fmt: skip
    except OSError as e:  # no flock on this file system's folders (before BaseException, which would catch it)
        os.close(fd)
        logger.debug("%s: no lock on the output folder here (%s): runs into it are not kept apart", path, e)
        return False
    except BaseException:  # Ctrl-C or SIGTERM while waiting: the descriptor goes, the folder stays the holder's
        os.close(fd)
        raise
    return True


class _Wait:
    """How long :func:`_locked` waits for another holder of a folder's lock, and the lines it prints meanwhile.

    Args:
        seconds: the longest wait (0: none).
        say: prints one line; default ``print`` to stdout, flushed.
    """

    def __init__(self, seconds: float, say: Callable[[str], object] | None = None) -> None:
        self.seconds = float(seconds)
        self.say = say or (lambda line: print(line, flush=True))

    def flock(self, fd: int, path: Path, flag: str) -> None:
        """Take ``fd``'s exclusive ``flock``, trying every :data:`WAIT_POLL_SECONDS` while another process holds it,
        for up to :attr:`seconds`.

        Raises:
            BlockingIOError: it is still held at the end, its argument saying how long this waited (``""``: not).
            OSError: no ``flock`` on this file system.
        """
        try:
            return fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if self.seconds <= 0:
                raise BlockingIOError("") from None
        start = last = time.monotonic()
        self.say(f"{flag} {path}: waiting for another run{_holder(path)} writing into it "
                 f"(at most {terminal.duration_text(self.seconds)})")  # fmt: skip
        while True:
            time.sleep(min(WAIT_POLL_SECONDS, max(0.0, start + self.seconds - time.monotonic())))
            try:
                return fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                now = time.monotonic()
            if now - start >= self.seconds:
                raise BlockingIOError(f" (waited {terminal.duration_text(now - start)})") from None
            if now - last >= terminal.LINE_SECONDS:
                self.say(f"{flag} {path}: still waiting for another run{_holder(path)}, "
                         f"{terminal.duration_text(now - start)}")  # fmt: skip
                last = now


def _same_file(fd: int, path: Path) -> bool:
    """Whether the locked ``fd`` is still the folder at ``path`` (not one removed and made again meanwhile)."""
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _remove_if_empty(path: Path, top: Path) -> None:
    """Remove ``path`` and its parents up to ``top`` while they are empty (the folders :func:`_make` created); one
    already removed is passed over, so that its created parents still go."""
    for folder in (path, *path.parents):
        try:
            folder.rmdir()
        except FileNotFoundError:
            pass
        except OSError:  # it holds the run's files
            return
        if folder == top:
            return


def _forget_in_child() -> None:
    """After a fork: the child closes its copies of the held descriptors (the parent's lock stays: a ``flock`` ends
    when the last descriptor of it closes), so a forked worker outliving its parent's command does not keep it."""
    for fd in _HELD.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


def folder_holder(folder: str | os.PathLike) -> tuple[int, str] | None:
    """The process holding ``folder``'s lock, told from ``/proc/locks`` without taking the lock (a run starting
    meanwhile is never refused for it).

    Args:
        folder: a folder.

    Returns:
        ``(process id, its command line)`` (the command line ``""`` where it cannot be read, shortened past 300
        characters), or ``None`` when no process holds it or this host cannot tell (no such folder, another host's
        lock, another OS).
    """
    try:
        st = Path(_key(folder)).stat()
        device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            pids = [fields[4] for fields in map(str.split, f)
                    if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == device]  # fmt: skip
    except (OSError, ValueError):
        return None
    if not pids or not pids[0].isdigit():
        return None
    try:
        raw = Path(f"/proc/{pids[0]}/cmdline").read_bytes().decode(errors="replace")
        cmd = " ".join(raw.replace("\0", " ").split())
    except OSError:
        cmd = ""
    return int(pids[0]), cmd if len(cmd) <= 300 else cmd[:297] + "..."


def _holder(path: Path) -> str:
    """``" (process 123: python -m monai.bundle run training ...)"`` for the process holding ``path``'s lock
    (:func:`folder_holder`); ``""`` where that cannot be told (another host, another OS)."""
    held = folder_holder(path)
    if held is None:
        return ""
    return f" (process {held[0]}{': ' + held[1] if held[1] else ''})"
