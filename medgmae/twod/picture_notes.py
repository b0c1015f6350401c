"""What the 2D reader (:mod:`medgmae.twod.images`) says of picture files that PIL reads short of what they hold.

* :func:`note_transparency`: a picture with transparent pixels (RGBA, LA, a palette or grey with a transparent
  colour) is read as the colour stored under them, often black, not composited onto a background; a line is logged
  once per file and process.
* :func:`note_colour_16bit`: a 16-bit colour or grey+alpha PNG, which PIL reads at 8 bits (each value's high
  byte): a warning once per file and process.
* :func:`float_tiff_note`: a TIFF of 64-bit (or 16-bit) floats, which PIL cannot open, named by its type from the
  header (read by tifffile) rather than as an unidentified file.
* :func:`displayed_orientation_note`: a picture-file reference mask of a NIfTI/DICOM image is read in the displayed
  orientation (the image's ``input.png``), not as the scan's array is stored; :func:`transposed_reference_problem`
  says so where its shape is the image's transposed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

__all__ = ["note_transparency", "note_colour_16bit", "float_tiff_note", "displayed_orientation_note", "transposed_reference_problem"]

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

#: PNG colour types (IHDR byte 25) PIL reads at 8 bits when their bit depth (byte 24) is 16.
_PNG_COLOUR_TYPES = {2: "RGB", 4: "grey+alpha", 6: "RGBA"}


def note_colour_16bit(path: Path) -> None:
    """Warn once per file and process that ``path`` is a 16-bit RGB, RGBA or grey+alpha PNG: PIL reads such a file
    at 8 bits, each value's high byte (a stored 300 reads as 1 / 255, values below 256 as 0). The header is read,
    not the pixels; other files are passed in silence."""
    if str(path) in _COLOUR_16BIT_NOTED:
        return
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[24] != 16 or head[25] not in _PNG_COLOUR_TYPES:
        return
    _COLOUR_16BIT_NOTED.add(str(path))
    logger.warning("%s is a 16-bit %s PNG, which is read at 8 bits (the high byte of each value: values below 256 "
                   "read as 0): save it as a 16-bit grey PNG, a TIFF of one channel or NIfTI to keep its 16 bits",
                   path, _PNG_COLOUR_TYPES[head[25]])  # fmt: skip


_COLOUR_16BIT_NOTED: set[str] = set()


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


#: Where a picture-file mask of a NIfTI/DICOM image must come from, as the notes and errors below say it.
DISPLAYED_ORIENTATION = ("a picture-file mask of a NIfTI/DICOM image is read in the displayed orientation, as the "
                         "command's input.png shows the image (radiological: anterior up, the patient's right on the "
                         "left), not as the scan's array is stored: save it from the displayed slice, or give the mask "
                         "as NIfTI/DICOM on the image's grid")  # fmt: skip


def displayed_orientation_note(reference: Path, image: Path, picture_reference: bool, windowed_image: bool) -> str:
    """The one-line note ``medgmae-2d segment`` prints for a picture-file ``reference`` of a NIfTI/DICOM ``image``
    (a mask saved from the stored array, ``Image.fromarray(m[:, :, k])``, is the displayed slice transposed or
    flipped; when the slice is square nothing else tells). ``""`` for other pairs.

    Args:
        reference: the reference mask file.
        image: the image file.
        picture_reference: whether ``reference`` is a PNG/JPEG/BMP/TIFF.
        windowed_image: whether ``image`` is a NIfTI/DICOM file.

    Returns:
        The note, or ``""``.
    """
    if not (picture_reference and windowed_image):
        return ""
    return f"--reference {reference.name} is a picture file of the {image.name} slice: {DISPLAYED_ORIENTATION}"


def transposed_reference_problem(problem: str, mask_hw: tuple[int, ...], image_hw: tuple[int, ...],
                                 picture_of_scan: bool) -> str:  # fmt: skip
    """``problem`` (the reference is off the image's ``(H, W)`` pixels) with what a transposed shape tells: a mask of
    ``mask_hw`` pixels that are ``image_hw`` transposed; for a picture-file mask of a NIfTI/DICOM image
    (``picture_of_scan``) the likely cause, a mask saved as the array is stored (:data:`DISPLAYED_ORIENTATION`).

    Args:
        problem: the grid check's message.
        mask_hw: the mask's ``(H, W)``.
        image_hw: the image's ``(H, W)`` as read.
        picture_of_scan: the mask is a picture file and the image a NIfTI/DICOM file.

    Returns:
        ``problem``, extended when the shapes are each other's transpose.
    """
    if tuple(mask_hw) == tuple(image_hw) or tuple(mask_hw) != tuple(image_hw)[::-1]:
        return problem
    why = f"; {DISPLAYED_ORIENTATION}" if picture_of_scan else ""
    return f"{problem}: the reference is the image's slice transposed{why}"
