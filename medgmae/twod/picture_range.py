"""16-bit picture files that use a narrow part of the 16-bit range: named in a warning before training.

The 2D reader divides a 16-bit PNG or TIFF by 65535 whatever its values (:mod:`medgmae.twod.images`: a stored
value reads the same in every image). A folder of 12-bit data saved as 16-bit (0..4095: a detector's counts, or CT
as HU + 1024) then reaches 0.0625 at most, nearly black, and CT saved as HU + 32768 (DeepLesion's PNGs) sits within
0.48..0.55, nearly uniform grey: the model trains on images with almost no contrast, and nothing said so.
:func:`warn_if_16bit_range_narrow` reads the 16-bit pictures of a dataset (a sample of them, evenly spread) and
warns of those whose own values lie within an eighth of the range; :func:`warn_if_picture_range_narrow` warns of one
picture from the values its reader already found (GViT's inference, which reads each file once).
"""

from __future__ import annotations

import logging
import os
from typing import Iterable

import numpy as np

from medgmae.twod.images import is_windowed
from medgmae.words import plural

__all__ = ["NARROW_SHARE", "SAMPLE", "sixteen_bit_spans", "warn_if_16bit_range_narrow", "warn_if_picture_range_narrow"]

logger = logging.getLogger("medgmae.twod")

#: A span of values under this share of the 16-bit range (8192 of 65535) is warned about: 12-bit data use 6 %.
NARROW_SHARE = 1 / 8
#: The 16-bit files read, at most (evenly spread over the dataset's list).
SAMPLE = 64
_UINT16_MAX = 65535


def _is_16bit_picture(path: str) -> bool:
    """Whether ``path`` is a PNG/TIFF of 16-bit (or 32-bit integer) values, by its header; ``False`` for any other
    image and a file that cannot be opened (the readers name it)."""
    from PIL import Image

    if is_windowed(path):
        return False
    try:
        with Image.open(path) as im:
            return im.mode.startswith("I")
    except Exception:  # noqa: BLE001 (PIL raises many kinds for a file it cannot read; the image check names it)
        return False


def sixteen_bit_spans(paths: Iterable[str | os.PathLike]) -> tuple[int, list[tuple[str, int, int]]] | None:
    """``(files, spans)``: how many of ``paths`` are 16-bit pictures, and for those read (at most :data:`SAMPLE`,
    evenly spread) each one's ``(path, low, high)``, the lowest and highest value it stores; ``None`` when none is
    one (or none could be read)."""
    from PIL import Image

    found = [str(p) for p in paths if _is_16bit_picture(str(p))]
    if not found:
        return None
    step = max(1, -(-len(found) // SAMPLE))
    spans = []
    for path in found[::step]:
        try:
            with Image.open(path) as im:
                arr = np.asarray(im)
        except Exception:  # noqa: BLE001 (as above)
            continue
        if arr.size:
            spans.append((path, int(arr.min()), int(arr.max())))
    return (len(found), spans) if spans else None


#: The narrow files a dataset's warning names, at most.
NAMED = 3


def warn_if_16bit_range_narrow(paths: Iterable[str | os.PathLike], where: str) -> None:
    """Warn when 16-bit PNG/TIFF files among ``paths`` hold values within less than :data:`NARROW_SHARE` of
    ``0..65535``, the range they are divided by (see the module docstring). Each sampled file is judged by its own
    span, as inference judges each picture, so that one full-range file does not hide the others: when all are
    narrow the warning gives their joint span, else how many are and the first :data:`NAMED` with theirs.

    Args:
        paths: the image files of a dataset.
        where: the data's name in the message (e.g. ``dataset_dir /data/pngs``).
    """
    found = sixteen_bit_spans(paths)
    if found is None:
        return
    files, spans = found
    narrow = [(p, lo, hi) for p, lo, hi in spans if _is_narrow(lo, hi)]
    low, high = min(lo for _, lo, _ in spans), max(hi for _, _, hi in spans)
    if len(narrow) == len(spans) and _is_narrow(low, high):  # the files share one narrow span
        _warn_if_narrow(files, len(spans), low, high, where)
    elif narrow:
        top = os.path.commonpath([os.path.dirname(p) for p, _, _ in spans])
        named = ", ".join(f"{os.path.relpath(p, top)} {lo}..{hi} (read as {lo / _UINT16_MAX:.3f}..{hi / _UINT16_MAX:.3f})"
                          for p, lo, hi in narrow[:NAMED])  # fmt: skip
        more = f" and {len(narrow) - NAMED} more" if len(narrow) > NAMED else ""
        of = f"{plural(files, 'file')}, all read" if len(spans) == files else f"{len(spans)} read of {files} files"
        logger.warning(
            "%s: %d of its 16-bit PNG/TIFF files (%s) each hold values within less than an eighth of the range 0..65535 "
            "they are divided by: %s%s; the model sees these almost without contrast (12-bit data, or CT stored as "
            "HU + 1024 or HU + 32768?); stretch them to the 16-bit range, or save them as NIfTI/DICOM and give a "
            "window in their unit", where, len(narrow), of, named, more,
        )  # fmt: skip


def _is_narrow(low: int, high: int) -> bool:
    """Whether stored values within ``low..high`` span less than :data:`NARROW_SHARE` of the 16-bit range."""
    return high - low < NARROW_SHARE * _UINT16_MAX


def warn_if_picture_range_narrow(stored_range: tuple[int, int] | None, where: str) -> None:
    """:func:`warn_if_16bit_range_narrow` for one picture already read: its lowest and highest stored value, as
    :func:`~medgmae.twod.images.read_image_source` gives them (``source["stored_range"]``), so the file is not
    opened again.

    Args:
        stored_range: ``(low, high)`` of a 16-bit (or 32-bit integer) picture; ``None`` (another image): no warning.
        where: the picture's name in the message (its path).
    """
    if stored_range is not None:
        _warn_if_narrow(1, 1, int(stored_range[0]), int(stored_range[1]), where)


def _warn_if_narrow(files: int, read: int, low: int, high: int, where: str) -> None:
    """The warning of :func:`warn_if_16bit_range_narrow` for ``read`` of ``files`` 16-bit files holding values
    within ``low..high``, when that span is under :data:`NARROW_SHARE` of the 16-bit range."""
    if not _is_narrow(low, high):
        return
    if files == 1:  # one picture (GViT's inference names each file): its values, not "its files'"
        whose, them = "its values (one 16-bit PNG/TIFF)", "it"
    else:
        of = f"{plural(files, 'file')}, all read" if read == files else f"{read} read of {files} files"
        whose, them = f"the values of its 16-bit PNG/TIFF files ({of})", "them"
    logger.warning(
        "%s: %s lie within %d..%d, %.0f %% of the range 0..65535 they are divided by: the model sees them within "
        "%.3f..%.3f, almost without contrast (12-bit data, or CT stored as HU + 1024 or HU + 32768?); stretch %s to "
        "the 16-bit range, or save %s as NIfTI/DICOM and give a window in their unit", where, whose, low, high,
        100 * (high - low) / _UINT16_MAX, low / _UINT16_MAX, high / _UINT16_MAX, them, them,
    )  # fmt: skip
