"""The fingerprints of the files a run reads: what tells that a listed volume changed, cheaply (size and time) or by
its content (SHA-256), over every file the volume is made of (:func:`volume_files`).

* :func:`file_fingerprint` (``stat``; a detached header's few lines): the pre-check's ledger (:mod:`medgmae.data.precheck`), the disk
  cache's item keys (:func:`medgmae.data.cache.item_hash`) and the training cases a resume is checked against
  (:class:`medgmae.engine.records.CasesRecord`, which keeps the size only, so that a copied dataset still resumes).
* :func:`file_sha256` / :func:`path_fingerprint` (the bytes): fine-tuning's record of its ``--pretrained`` file
  (:func:`medgmae.finetune.run_record.pretrained_record`), ``medgmae-recon``'s check of a changed ``--checkpoint``
  or ``--fbp`` on resume and ``simulate.json``'s volume, and GViT's search for copied images.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

__all__ = ["HEADER_BYTES", "detached_data_file", "file_fingerprint", "file_sha256", "path_fingerprint", "volume_files"]

#: Bytes read at a time by :func:`file_sha256`.
_BLOCK = 1 << 20
#: The most bytes of a header :func:`detached_data_file` reads (headers are a few hundred bytes).
HEADER_BYTES = 1 << 16
#: The header keys naming a detached header's data file (NRRD allows both spellings), by the header's suffix.
_DATA_FILE_KEYS = {".mhd": ("elementdatafile",), ".nhdr": ("data file", "datafile")}


def detached_data_file(path: str | os.PathLike) -> Path | None:
    """The data file a detached header names (MetaImage ``.mhd``: ``ElementDataFile``; NRRD ``.nhdr``: ``data
    file``), whether it exists or not; ``None`` for other files and for data in the header's own file or in several
    files (``LOCAL``, ``LIST``, a ``%`` pattern; NRRD's multi-word forms).

    Only the header is read, line by line up to that field (MetaImage's last) or the blank line ending an NRRD
    header, at most :data:`HEADER_BYTES`: a ``LOCAL`` file's voxels are never read.

    Args:
        path: a volume file.

    Returns:
        The data file's path (relative names resolved against the header's folder), or ``None``.

    Raises:
        OSError: the header cannot be read.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    names = _DATA_FILE_KEYS.get(suffix)
    if names is None:
        return None
    with open(path, "rb") as f:
        for raw in iter(lambda: f.readline(HEADER_BYTES), b""):
            if f.tell() > HEADER_BYTES or (suffix == ".nhdr" and not raw.strip()):
                return None  # past the header (an NRRD header ends at a blank line)
            name, sep, value = raw.decode("utf-8", "replace").partition("=" if suffix == ".mhd" else ":")
            if sep and name.strip().lower() in names:
                return _named_data_file(path, value.strip(), suffix)
    return None


def _named_data_file(header: Path, value: str, suffix: str) -> Path | None:
    """The one data file ``value`` names, or ``None`` for data in the header's file or in several files."""
    upper = value.upper()
    several = upper.startswith("LIST") or "%" in value or (suffix == ".nhdr" and " " in value)  # MetaIO / NRRD forms
    if not value or upper == "LOCAL" or several:
        return None
    return Path(value) if Path(value).is_absolute() else header.parent / value


def volume_files(path: str | os.PathLike) -> list[Path]:
    """The files a volume is read from: a DICOM series folder's files (its top level, as the reader lists it), a
    detached header and its data file, else the file itself.

    Args:
        path: a volume file or DICOM folder.

    Returns:
        The files, sorted for a folder (a data file that does not exist is left out, for the reader to name).

    Raises:
        OSError: the folder cannot be listed or the header read.
    """
    path = Path(path)
    if path.is_dir():
        return sorted(Path(e.path) for e in os.scandir(path) if e.is_file())
    data = detached_data_file(path)
    return [path] + ([data] if data is not None and data.is_file() else [])


def file_fingerprint(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(size in bytes, modification time in ns)`` of a volume, from ``stat`` (a detached header's first lines are
    read for its data file's name, :func:`detached_data_file`; no voxel is read).

    A folder (a DICOM series) counts as its files: their sizes added, and the newest modification time of the
    folder (which changes when a file is added, removed or renamed) and its files, through one ``scandir``; a
    detached header (``.mhd``, ``.nhdr``) with its data file likewise.

    Args:
        path: a file or folder.

    Returns:
        ``(size, mtime_ns)``, or ``None`` when ``path`` cannot be stat'ed (missing, no permission).
    """
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            files = [e.stat() for e in os.scandir(Path(path)) if e.is_file()]
        elif Path(path).suffix.lower() in _DATA_FILE_KEYS:
            files = [os.stat(f) for f in volume_files(path)]
        else:
            return st.st_size, st.st_mtime_ns
    except OSError:
        return None
    return sum(f.st_size for f in files), max([st.st_mtime_ns] + [f.st_mtime_ns for f in files])


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks (a large checkpoint is never held whole).

    Args:
        path: the file.

    Returns:
        The 64 hexadecimal digits.

    Raises:
        TypeError: ``path`` is not a path.
        OSError: the file cannot be read (its message names it).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"file_sha256: path must be a path, got {type(path).__name__}")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def path_fingerprint(path: str | os.PathLike) -> dict:
    """What a run read from ``path``, for its records: ``{"path": absolute path, "sha256": ...}``: the SHA-256 of a
    single file's bytes, or, for a volume of several files (:func:`volume_files`: a DICOM folder, a header and its
    data), of the lines ``<name relative to path's folder>\t<SHA-256 of the file>\n``, one per file.

    Args:
        path: an existing file or folder.

    Returns:
        The fingerprint.
    """
    path = Path(path)
    files = volume_files(path)
    if files == [path]:
        return {"path": str(path.resolve()), "sha256": file_sha256(path)}
    base = path if path.is_dir() else path.parent
    lines = "".join(f"{os.path.relpath(f, base)}\t{file_sha256(f)}\n" for f in files)
    return {"path": str(path.resolve()), "sha256": hashlib.sha256(lines.encode()).hexdigest()}
