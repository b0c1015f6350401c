"""What the 2D reader (:mod:`medgmae.twod.images`) says of picture files that PIL reads short of what they hold.

* :func:`note_transparency`: a picture with transparent pixels (RGBA, LA, a palette or grey with a transparent
  colour) is read as the colour stored under them, often black, not composited onto a background; a line is logged
  once per file and process.
* :func:`float_tiff_note`: a TIFF of 64-bit (or 16-bit) floats, which PIL cannot open, named by its type from the
  header (read by tifffile) rather than as an unidentified file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

__all__ = ["note_transparency", "float_tiff_note"]

logger = logging.getLogger("medgmae.twod")


def note_transparency(im, path: Path) -> None:
    """Log once per file and process that ``im`` (read from ``path``) has transparent pixels, which are read as the
    colour stored under them (often black), not composited: alpha is dropped."""
    if str(path) in _TRANSPARENCY_NOTED or not ("A" in im.getbands() or "transparency" in im.info):
        return
    alpha = im.getchannel("A") if "A" in im.getbands() else im.convert("RGBA").getchannel("A")
    if alpha.getextrema()[0] < 255:
        _TRANSPARENCY_NOTED.add(str(path))
        logger.info("%s has transparent pixels: they are read as the colour stored under them, not composited onto a "
                    "background (alpha is dropped)", path)  # fmt: skip


_TRANSPARENCY_NOTED: set[str] = set()


def float_tiff_note(path: Path) -> str:
    """Why PIL cannot open a TIFF, where its header tells it (tifffile reads the header alone):
    ``"a float64 TIFF, which PIL cannot read: save it as float32"`` (PIL reads 32-bit floats only); ``""`` for
    another file or cause, or without tifffile."""
    if not path.name.lower().endswith((".tif", ".tiff")):
        return ""
    try:
        import tifffile
    except ImportError:
        return ""
    try:
        with tifffile.TiffFile(path) as tif:
            dtype = np.dtype(tif.pages[0].dtype) if len(tif.pages) and tif.pages[0].dtype is not None else None
    except (tifffile.TiffFileError, OSError, ValueError, IndexError, AttributeError):
        return ""
    if dtype is None or dtype.kind != "f" or dtype.itemsize == 4:
        return ""
    return f"a {dtype.name} TIFF, which PIL cannot read: save it as float32"
