"""A write that failed for want of room (a full disk or quota, a file-size limit) or was refused for want of
permission (a read-only folder or file system: :func:`refused_write`): told apart from other errors and named with
its final file, whichever library was writing; and the free room a write would find (:func:`free_room`).

Libraries report it each their own way: ``OSError`` with ``ENOSPC`` / ``EDQUOT`` / ``EFBIG`` (gzip, PIL, plain
files), ``torch.save``'s ``RuntimeError`` from its C++ stream (``[enforce fail at inline_container.cc] . unexpected
pos ...``, ``basic_ios::clear: iostream error``), NumPy's ``OSError: 23780 requested and 7648 written`` with no
errno; a refusal as ``PermissionError``, ``OSError`` with ``EROFS``, or ``torch.save``'s ``RuntimeError`` (``open file
failed with strerror: Read-only file system``). :func:`medgmae.files.atomic_write` (and
:func:`medgmae.files.staged_outputs`) turns each into one :class:`OutputWriteError` naming the final file, not the
temporary one, which the bundles and command-line tools print as their last line, without the library's traceback.
No ignite or MONAI imports.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

__all__ = ["OutputWriteError", "write_failure", "moved_failure", "refused_write", "free_room"]

#: The errno values of a write refused for want of room.
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
#: ``torch.save``'s and NumPy's words for a write cut short (they carry no errno).
_CUT_SHORT = re.compile(r"unexpected pos \d+ vs \d+|iostream error|PytorchStreamWriter failed|\d+ requested and \d+ written")


class OutputWriteError(OSError):
    """A file could not be written for want of room or of permission; ``filename`` is the final path (nothing of it
    was kept)."""

    @property
    def said(self) -> str | None:
        """The one line to print: the message, also of the copy a PyTorch ``DataLoader`` raises for its worker's
        error (``OutputWriteError(text)``, the worker's traceback as text, no ``strerror``: a cache file written in
        a worker); ``None`` when the text holds none."""
        if self.strerror:
            return str(self.strerror)
        for line in reversed(str(self).splitlines()):
            found = _WORKER_LINE.search(line)
            if found:
                return found.group(1)
        return None


#: The worker's own last line in the text of a ``DataLoader``'s copy of the error.
_WORKER_LINE = re.compile(r"OutputWriteError: \[Errno \d+\] (.* could not be written .*?)(?:: '[^']*')?$")


def write_failure(
    path: str | os.PathLike, error: BaseException, written: str | os.PathLike | None = None
) -> OutputWriteError | None:
    """The :class:`OutputWriteError` for ``error``, raised while writing ``path``, when it is a write refused or cut
    short for want of room, or refused for want of permission (:func:`refused_write`: a read-only folder or file
    system); ``None`` for any other error (which then propagates as it is).

    Args:
        path: the file being written (its final name, not the temporary one).
        error: what the writer raised.
        written: the temporary file a block of code wrote ``path``'s content to: a refusal naming another file (an
            input the block read) is not this write's. ``None``: ``error`` came from writing ``path`` itself.
    """
    if isinstance(error, OutputWriteError):
        return error
    advice = _NO_ROOM_ADVICE
    if isinstance(error, OSError) and error.errno in _NO_ROOM:
        reason = error.strerror or os.strerror(error.errno)
    elif isinstance(error, (OSError, RuntimeError)) and _CUT_SHORT.search(str(error)):
        first = str(error).strip().splitlines()[0]
        reason = f"the write was cut short: {first[:160]}"
    elif (reason := refused_write(error)) is not None and _names_the_write(error, path, written):
        advice = "is its folder read-only, or another user's?"
    else:
        return None
    code = error.errno if isinstance(error, OSError) and error.errno else _REFUSED_CODE.get(reason, errno.EIO)
    said = f"{os.fspath(path)} could not be written ({reason}): {advice} Nothing of it was kept"
    return OutputWriteError(code, said, os.fspath(path))


#: What a write without room is asked.
_NO_ROOM_ADVICE = "is the disk or your quota full, or a file-size limit (ulimit -f) set?"
#: The errno values of a write refused for want of permission, and their words (:func:`refused_write`).
_REFUSED = (errno.EACCES, errno.EPERM, errno.EROFS)
_REFUSED_CODE = {os.strerror(code): code for code in _REFUSED}


def _names_the_write(error: BaseException, path: str | os.PathLike, written: str | os.PathLike | None) -> bool:
    """Whether ``error`` is about writing ``path`` through the temporary file ``written`` (:func:`write_failure`):
    it names no file (``torch.save``'s words), or one of these two."""
    named = [getattr(error, "filename", None), getattr(error, "filename2", None)]
    named = [os.path.abspath(os.fsdecode(os.fspath(n))) for n in named if n is not None]
    return written is None or not named or bool({os.path.abspath(p) for p in (path, written)} & set(named))


def moved_failure(error: OutputWriteError, staging: Path, target: Path) -> OutputWriteError:
    """``error`` of a file written into the ``staging`` folder of :func:`medgmae.files.staged_outputs`, named by the
    file it was to become below ``target``."""
    name = Path(error.filename or "")
    if not name.is_relative_to(staging):
        return error
    final = os.fspath(target / name.relative_to(staging))
    return OutputWriteError(error.errno, str(error.strerror).replace(os.fspath(name), final), final)


def refused_write(error: BaseException) -> str | None:
    """The system's words when ``error`` is a write refused for want of permission (``PermissionError``, a read-only
    file system, ``torch.save``'s ``RuntimeError`` quoting ``strerror``), else ``None``."""
    if isinstance(error, OSError) and error.errno in _REFUSED:  # an OutputWriteError's strerror is its whole message
        return os.strerror(error.errno) if isinstance(error, OutputWriteError) else error.strerror or os.strerror(error.errno)
    return next((os.strerror(code) for code in _REFUSED if os.strerror(code) in str(error)), None)


def free_room(folder: str | os.PathLike) -> tuple[Path, int] | None:
    """The free room of the file system a file in ``folder`` would be written on (the room a write there finds, not
    what a quota may further limit).

    Args:
        folder: the folder (``~`` expanded); where it does not exist yet, the nearest folder above it that does
            (the file system the folder made for the write would be on).

    Returns:
        ``(the folder measured, its free bytes)``, or ``None`` where the free room cannot be read.
    """
    measured = Path(folder).expanduser().absolute()
    try:  # exists() raises where a folder above cannot be entered (permission refused): the room cannot be read
        while not measured.exists() and measured.parent != measured:
            measured = measured.parent
        return measured, shutil.disk_usage(measured).free
    except OSError:
        return None
