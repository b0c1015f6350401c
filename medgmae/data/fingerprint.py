"""The one per-file fingerprint of the data layer: what tells that a listed file (or DICOM series folder) changed.

Used by the pre-check's ledger (:mod:`medgmae.data.precheck`), the disk cache's item keys
(:func:`medgmae.data.cache.item_hash`) and the training cases a resume is checked against
(:class:`medgmae.engine.records.CasesRecord`, which keeps the size only, so that a copied dataset still resumes).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["file_fingerprint"]


def file_fingerprint(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(size in bytes, modification time in ns)`` of a file, read from one ``stat``.

    A folder (a DICOM series) counts as its files: their sizes added, and the newest modification time of the
    folder (which changes when a file is added, removed or renamed) and its files, through one ``scandir``.

    Args:
        path: a file or folder.

    Returns:
        ``(size, mtime_ns)``, or ``None`` when ``path`` cannot be stat'ed (missing, no permission).
    """
    try:
        st = os.stat(path)
        if not stat.S_ISDIR(st.st_mode):
            return st.st_size, st.st_mtime_ns
        files = [e.stat() for e in os.scandir(Path(path)) if e.is_file()]
    except OSError:
        return None
    return sum(f.st_size for f in files), max([st.st_mtime_ns] + [f.st_mtime_ns for f in files])
