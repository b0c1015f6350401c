"""DICOM frames for the 2D tools: one frame of a DICOM file with its window, turned to the radiological view in
which :mod:`medgmae.twod.images` (the one 2D image reader, which reads DICOM files through here) shows NIfTI slices."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["read_dicom_frame", "dicom_without_pixels", "describes_image", "NO_PIXELS"]

#: Why a DICOM file without pixel data is not an image: a DICOMDIR (the directory record of a CD or PACS export),
#: a structured report, a presentation state or a key object selection holds no pixels to show.
NO_PIXELS = "a DICOM file without pixel data (a directory record / report), not an image"

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

#: Attributes of the image pixel module (group 0028): a header holding any describes an image.
_IMAGE_PIXEL_KEYWORDS = ("Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated",
                         "BitsStored", "HighBit", "PixelRepresentation")  # fmt: skip


def describes_image(ds: Any) -> bool:
    """Whether a DICOM header (``ds``, read with or without its pixel data) describes an image: its SOP class is
    an image storage class (``CT Image Storage``, ``Secondary Capture Image Storage``...: its name says ``Image
    Storage``) or it holds an attribute of the image pixel module (``Rows``, ``PhotometricInterpretation``...). A
    ``DICOMDIR``, a structured report or a presentation state does neither; an image's file cut off inside its
    header (before ``Rows``) still names its SOP class."""
    if any(k in ds for k in _IMAGE_PIXEL_KEYWORDS):
        return True
    uid = getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None) or ds.get("SOPClassUID")
    return "image storage" in str(getattr(uid, "name", "") or "").lower()


def dicom_without_pixels(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a readable DICOM file that holds no pixel data (a ``DICOMDIR``, a structured report, a
    presentation state), from its header alone: the data set is read up to its pixel data
    (``stop_before_pixels``, long values skipped), and holds none when that reading ends at the end of the file
    and it describes no image either (:func:`describes_image`).

    ``False`` for a file with pixel data, for an image's file cut off before its pixels or inside its header (an
    image's SOP class or pixel-module attributes, no pixel data: a truncated image, which the reader names as
    such), and for a file whose header cannot be read (not DICOM, or damaged): the reader
    (:func:`read_dicom_frame`) names its problem when it is loaded.
    """
    import pydicom

    try:
        with open(path, "rb") as f:
            ds = pydicom.dcmread(f, stop_before_pixels=True, defer_size=1024)
            return f.read(1) == b"" and not describes_image(ds)  # bytes left: reading stopped before pixel data
    except Exception:  # pydicom raises several types for files that are not DICOM or are damaged
        return False


def _compression_words(ds: Any) -> str:
    """``" (pixel data compressed as JPEG 2000 ...: ...)"``, what to do about a file whose pixel data are compressed
    (its transfer syntax), or ``""`` for uncompressed ones."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or not getattr(syntax, "is_compressed", False):
        return ""
    return (f" (pixel data compressed as {syntax.name}: decompress the file, e.g. gdcmconv --raw, or install a "
            "decoder pydicom uses, e.g. pylibjpeg with its plugins)")


def read_dicom_frame(
    path: Path, slice_index: int | None, stored: bool = False
) -> tuple[np.ndarray, tuple[float, float] | None, dict, str]:
    """One frame of a DICOM file, ``(C, H, W)``, its window, which frame (``{"axis": "frame", "index", "count"}``)
    and its kind: ``"grey"`` (rescaled values; the window in their units), ``"monochrome1"`` (the same, to be shown
    inverted once windowed: high values dark) or ``"colour"`` (RGB / YBR, or a PALETTE COLOR frame through its colour
    table, divided by its bit depth to ``[0, 1]``; no window). ``stored``: the stored values (no rescale, no colour
    table, no window)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(str(path))
    except (InvalidDicomError, AttributeError, KeyError, ValueError, OSError, TypeError) as e:
        raise ValueError(f"{path}: not a readable DICOM image ({type(e).__name__}: {e})") from e
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        if not describes_image(ds):
            raise ValueError(f"{path}: {NO_PIXELS}{_sop_class_words(ds)}")
        raise ValueError(f"{path}: a truncated DICOM image{_sop_class_words(ds)}: its header describes an image "
                         "but the file ends before its pixel data (cut off in copying or downloading?)")  # fmt: skip
    try:
        arr = ds.pixel_array.astype(np.float32)
    except (InvalidDicomError, AttributeError, KeyError, ValueError, OSError, TypeError, RuntimeError,
            NotImplementedError) as e:  # the last two: compressed pixel data that no installed decoder reads
        raise ValueError(f"{path}: not a readable DICOM image{_compression_words(ds)} ({type(e).__name__}: "
                         f"{' '.join(str(e).split())})") from e  # fmt: skip
    photometric = str(getattr(ds, "PhotometricInterpretation", "")).upper()
    rgb = photometric in ("RGB", "YBR_FULL", "YBR_FULL_422")
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    k = (frames // 2 if frames > 1 else 0) if slice_index is None else int(slice_index)
    if not 0 <= k < frames:  # a single frame too: --slice 40 of a folder of single frames showed frame 0
        raise ValueError(f"{path}: frame {k} is outside the file's {frames} frame{'s' if frames > 1 else ''} (numbered from 0)")
    if frames > 1:
        arr = arr[k]
    which = {"axis": "frame", "index": k, "count": frames}
    if photometric == "PALETTE COLOR" and not stored:  # indices into a colour table (ultrasound): its colours
        colours = _palette_colours(ds, path)
        return _radiological_frame(colours[k] if frames > 1 else colours, ds), None, which, "colour"
    if rgb:  # stored too: a colour mask's channels, (3, H, W)
        return _radiological_frame(arr.transpose(2, 0, 1) / _sample_max(ds, path), ds), None, which, "colour"
    if stored:
        return _radiological_frame(arr[None], ds), None, which, "grey"
    arr = arr * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
    window = None
    centre, width = getattr(ds, "WindowCenter", None), getattr(ds, "WindowWidth", None)
    if centre is not None and width is not None:
        centre = float(centre[0] if isinstance(centre, pydicom.multival.MultiValue) else centre)
        width = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
        if width > 0:
            window = (centre - width / 2.0, centre + width / 2.0)
    return _radiological_frame(arr[None], ds), window, which, "monochrome1" if photometric == "MONOCHROME1" else "grey"


def _palette_colours(ds: Any, path: Path) -> np.ndarray:
    """A PALETTE COLOR image's pixels through its colour table, ``(3, H, W)`` or ``(frames, 3, H, W)`` in
    ``[0, 1]`` (divided by the largest value of the table's entries' type).

    Raises:
        ValueError: naming ``path``, a colour table pydicom cannot apply.
    """
    try:
        from pydicom.pixels import apply_color_lut
    except ImportError:  # pydicom 2
        from pydicom.pixel_data_handlers.util import apply_color_lut
    try:
        rgb = apply_color_lut(ds.pixel_array, ds)
    except (AttributeError, KeyError, ValueError, TypeError, IndexError) as e:
        raise ValueError(f"{path}: a PALETTE COLOR image whose colour table cannot be applied ({type(e).__name__}: "
                         f"{e}); convert it to RGB first (e.g. gdcmconv --rgb)") from e  # fmt: skip
    top = float(np.iinfo(rgb.dtype).max) if np.issubdtype(rgb.dtype, np.integer) else 1.0
    return np.moveaxis(rgb.astype(np.float32) / top, -1, -3)


def _sample_max(ds: Any, path: Path) -> float:
    """The largest value a colour DICOM's samples can hold, ``2 ** BitsStored - 1`` (255 for 8-bit samples, 65535
    for 16-bit ones; without ``BitsStored``, by ``BitsAllocated``, else 8 bits), by which they are divided to
    ``[0, 1]``: a colour frame is scaled by its bit depth, as a colour picture file is by its integer type, where a
    grey frame is windowed (divided by 255, 16-bit samples saturated at 1).

    Raises:
        ValueError: naming ``path``, a bit depth that is not a whole number from 1 to 32.
    """
    bits = getattr(ds, "BitsStored", None) or getattr(ds, "BitsAllocated", None) or 8
    try:
        depth = int(bits)
    except (TypeError, ValueError):
        depth = 0
    if not 1 <= depth <= 32:
        raise ValueError(f"{path}: BitsStored {bits!r} is not a bit depth from 1 to 32")
    return float(2**depth - 1)


def _sop_class_words(ds) -> str:
    """``" (Media Storage Directory Storage)"``: the file's SOP class by name, or ``""`` without one."""
    uid = getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None) or getattr(ds, "SOPClassUID", None)
    if not uid:
        return ""
    name = getattr(uid, "name", "") or str(uid)
    return f" ({name})"


#: The LPS direction each world axis should run along an image axis shown radiologically (as the NIfTI path shows
#: a slice): toward the patient's left (R first), posterior (A first) and inferior (S first).
_RADIOLOGICAL_LPS = (1.0, 1.0, -1.0)


def _radiological_frame(arr: np.ndarray, ds) -> np.ndarray:
    """A DICOM frame ``(C, H, W)`` turned to the radiological view of a NIfTI slice
    (:func:`medgmae.twod.nifti_slices.nifti_plane`) by its ImageOrientationPatient (LPS direction cosines of a row,
    then of a column): columns flipped or rows flipped so that R, A or S comes first, and transposed so that the
    horizontal axis is the lower of x, y, z. A standard axial slice (``1 0 0 0 1 0``) is unchanged; a frame without
    the tag, or whose two axes lean mostly along one world axis, is kept in its stored order."""
    iop = getattr(ds, "ImageOrientationPatient", None)
    if iop is None:  # an enhanced multi-frame file keeps it in its shared functional groups
        try:
            iop = ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
        except (AttributeError, IndexError, KeyError):
            return arr
    try:
        cos = np.asarray([float(v) for v in iop], dtype=np.float64)
    except (TypeError, ValueError):
        return arr
    if cos.shape != (6,):
        return arr
    row, col = cos[:3], cos[3:]
    ar, ac = int(np.argmax(np.abs(row))), int(np.argmax(np.abs(col)))
    if ar == ac:
        return arr
    if np.sign(row[ar]) != _RADIOLOGICAL_LPS[ar]:  # along a row: the column index
        arr = arr[:, :, ::-1]
    if np.sign(col[ac]) != _RADIOLOGICAL_LPS[ac]:
        arr = arr[:, ::-1, :]
    if ar > ac:
        arr = arr.transpose(0, 2, 1)
    return np.ascontiguousarray(arr)
