"""The content fingerprint of a file a run reads: SHA-256 of its bytes, so that a record tells two files apart that
were read at one path (e.g. the ``encoder.pt`` a later pre-training run replaced).

Fine-tuning records the ``--pretrained`` file's (:func:`medgmae.finetune.run_record.pretrained_record`).
"""

from __future__ import annotations

import hashlib
import os

__all__ = ["file_sha256"]

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
