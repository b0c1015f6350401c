"""The content fingerprint of a file a run reads: SHA-256 of its bytes, so that a record tells two files apart that
were read at one path (e.g. the ``encoder.pt`` a later pre-training run replaced).

Fine-tuning records the ``--pretrained`` file's (:func:`medgmae.finetune.run_record.pretrained_record`);
``medgmae-recon`` its inputs' (:func:`path_fingerprint`: a file, or a DICOM folder by its files), with which a
resume tells a changed ``--checkpoint`` or ``--fbp`` and ``simulate.json`` names the volume it read.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["file_sha256", "path_fingerprint"]

#: Bytes read at a time.
_BLOCK = 1 << 20


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


def path_fingerprint(path: str | Path) -> dict:
    """What a run read from ``path``, for its records: ``{"path": absolute path, "sha256": ...}``, the SHA-256 of a
    file's bytes, or of a folder's (a DICOM series) lines ``<path below it>\t<SHA-256 of the file>\n``, one per file
    below it, sorted by path.

    Args:
        path: an existing file or folder.

    Returns:
        The fingerprint.
    """
    path = Path(path)
    if not path.is_dir():
        return {"path": str(path.resolve()), "sha256": file_sha256(path)}
    files = sorted(p for p in path.rglob("*") if p.is_file())
    lines = "".join(f"{p.relative_to(path).as_posix()}\t{file_sha256(p)}\n" for p in files)
    return {"path": str(path.resolve()), "sha256": hashlib.sha256(lines.encode()).hexdigest()}
