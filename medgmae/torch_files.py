"""PyTorch files: the one safe ``torch.load`` (``weights_only=True``, errors naming the file and what it is: not a
PyTorch file, a truncated one, an exported TorchScript network, one holding Python objects) and ``torch.save``
written atomically (:func:`medgmae.files.atomic_write`). No ignite or MONAI imports."""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from medgmae.files import atomic_write
from medgmae.missing_paths import missing_path_message

__all__ = ["load_torch_file", "save_torch_atomic", "torch_file_kind"]


def save_torch_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through :func:`atomic_write`; returns the final path."""
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def torch_file_kind(path: Path) -> str:
    """What ``path`` is for :func:`load_torch_file`'s messages: ``"zip"`` or ``"pickle"`` (it starts as ``torch.save``
    output does), ``"cut"`` (a zip archive without the end record every complete one has: a copy or write stopped
    early; torch's errors vary with where it was cut), ``"torchscript"`` (a ``torch.jit.save`` archive, e.g. an
    exported ``model.ts``: network code, which ``torch.load`` refuses, advising ``weights_only=False``) or ``"other"``."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head.startswith(b"PK\x03\x04"):
        return "pickle" if head[:1] == b"\x80" else "other"
    try:  # an end record that survived a damaged central directory: is_zipfile passes, ZipFile does not
        with zipfile.ZipFile(path) as archive:
            return "torchscript" if any(n.rsplit("/", 1)[-1] == "constants.pkl" for n in archive.namelist()) else "zip"
    except (zipfile.BadZipFile, OSError):
        return "cut"


def load_torch_file(
    path: str | os.PathLike, map_location: Any = "cpu", what: str = "checkpoint", mmap: bool = False,
    damaged_advice: str | None = None, objects_advice: str | None = None,
) -> Any:
    """``torch.load(weights_only=True)`` with errors naming the file.

    Args:
        path: the file.
        map_location: where tensors are loaded.
        what: the file, as messages name it.
        mmap: memory-map the file, so that tensors not used are not read (files written by ``torch.save``).
        damaged_advice: what a truncated or damaged file's message advises (default: write or copy it again).
        objects_advice: what the message of a file holding other Python objects (``torch.save(model)``) advises
            (default: only files of this toolkit or plain tensors are accepted).

    Returns:
        The loaded object.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is unreadable or corrupt, or it holds Python objects other than tensors and plain
            data (it is refused, and nothing in it runs).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(missing_path_message(path, f"{what} not found: {path}"))
    if torch_file_kind(path) == "torchscript":  # torch.load's own words would advise weights_only=False
        raise ValueError(f"{path}: a TorchScript file (an exported network such as model.ts, read by torch.jit.load), "
                         f"not a {what} written by torch.save; is this the right path?")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if torch_file_kind(path) == "other":  # torch blames weights_only for any bytes it cannot unpickle
            raise ValueError(f"{path}: not a PyTorch file (a {what} written by torch.save is a zip archive); "
                             "is this the right path?") from e
        if "weights_only" in msg or "Unsupported global" in msg or "Weights only load failed" in msg:
            lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
            why = next((ln for ln in lines if "Unsupported" in ln or "WeightsUnpickler" in ln), lines[-1] if lines else "")
            why = re.split(r"\.? Please use `?torch\.serialization", why)[0]  # its allowlisting advice: not for here
            advice = objects_advice or "Only files written by this toolkit (or re-saved as plain tensors) are accepted."
            raise ValueError(
                f"{path}: refused to load this {what}: it holds Python objects other than tensors and plain data, "
                f"and loading such objects could run arbitrary code. {advice} ({why})"
            ) from e
        raise ValueError(f"{path}: not a readable PyTorch file ({type(e).__name__}: {e})") from e
    except Exception as e:  # corrupt, truncated or not a torch file
        if torch_file_kind(path) == "other":  # torch's own words (e.g. about mmap and zip files) would not help
            raise ValueError(f"{path}: not a PyTorch file (a {what} written by torch.save is a zip archive); "
                             "is this the right path?") from e
        if torch_file_kind(path) == "cut":
            raise ValueError(f"{path}: not a complete PyTorch file: truncated or damaged (its zip archive is incomplete "
                             f"or damaged, as when a copy or write stopped early); {damaged_advice or f'write or copy the {what} again'}") from e
        if isinstance(e, RuntimeError) and "deserialize object on" in str(e):  # the file is fine: the device is not
            raise ValueError(f"{path}: cannot load this {what} onto map_location={map_location!r}: that device is "
                             f"not available here (use map_location='cpu'). ({str(e).splitlines()[0]})") from e
        raise ValueError(f"{path}: not a readable PyTorch file ({type(e).__name__}: {e})") from e
