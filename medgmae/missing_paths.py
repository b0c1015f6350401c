"""Why an input path leads to no file: the one place the readers' errors take their words from, so that every command
names a dangling symbolic link (and where it points) and a link loop the same way. No imports beyond the standard
library."""

from __future__ import annotations

import errno
import os
from pathlib import Path

__all__ = ["missing_path_message", "is_link_loop"]


def is_link_loop(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a symbolic link that leads back to itself, directly (``a -> a``) or through other links
    (``a -> b -> a``): looking it up fails with ELOOP.

    Args:
        path: the path given.

    Returns:
        ``True`` for a link loop, ``False`` for anything else (a file, a dangling link, nothing).
    """
    try:
        os.stat(path)
    except OSError as e:
        return e.errno == errno.ELOOP
    return False


def missing_path_message(path: str | os.PathLike, missing: str) -> str:
    """The error for an input ``path`` that leads to no file or folder.

    Args:
        path: the path given.
        missing: the reader's own words for a path that does not exist (``"volume not found: ct.nii.gz"``).

    Returns:
        ``"<path>: a symbolic link loop (it points back to itself)"`` for a link loop; else ``missing``, followed by
        where a dangling link points (``" (a link to moved/ct.nii.gz, which does not exist)"``).
    """
    p = Path(path)
    if is_link_loop(p):
        return f"{p}: a symbolic link loop (it points back to itself)"
    if p.is_symlink():
        return f"{missing} (a link to {os.readlink(p)}, which does not exist)"
    return missing
