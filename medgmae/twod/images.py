"""Reading 2D images (PNG, JPEG, a NIfTI slice, DICOM) into ``[0, 1]`` float arrays, and writing PNG grids.

Every reader returns a ``(C, H, W)`` float32 array with ``C`` 1 (grey) or 3 (RGB), scaled to ``[0, 1]``:

* PNG/JPEG/BMP/TIFF: one image (a multi-page TIFF is refused), 8-bit or 16-bit grey, 8-bit grey+alpha, RGB(A) or palette
  (16-bit colour and grey+alpha PNGs are read by PIL at 8 bits, the high byte: warned of once per file)
  (grey when its pixels are; alpha is dropped: transparent pixels read as the colour stored under them, not
  composited onto a background, noted in the log once per file: :mod:`medgmae.twod.picture_notes`), upright by the
  file's EXIF orientation (a camera's JPEG); divided by the maximum of the file's integer type: 255 for 8-bit, 65535 for 16-bit, whatever the image's own values. A fixed scale keeps
  intensities comparable between images (the same stored value reads the same everywhere) and does not depend on
  content: a dark 16-bit image stays dark, it is neither stretched to its own maximum nor taken for 8-bit because
  its values happen to stay below 256. 32-bit integer images (PIL mode ``I``, e.g. a 16-bit PNG in old Pillow
  versions or an ``int32`` TIFF) are read as 16-bit data and must hold values in ``[0, 65535]``; floating-point
  images are taken as already scaled and must hold values in ``[0, 1]`` (32-bit ones: a float64 TIFF, which PIL
  cannot open, is refused naming its type).
* NIfTI (``.nii``, ``.nii.gz``): a 2D or single-slice image, or one axial slice of a volume (the middle slice
  unless ``slice_index`` is given). Every file is reoriented to RAS by its affine and shown radiologically
  (anterior up, patient's right on the left), so a 2D image, a one-slice volume and a slice of a volume with the
  same affine give the same picture; scaled by ``window`` if given, else between the 0.5 and 99.5 percentiles:
  :mod:`medgmae.twod.nifti_slices`.
* DICOM: rescale slope/intercept applied, then the given window, the file's first window (centre/width) or,
  without either, the 0.5 and 99.5 percentiles, all in the file's rescaled units; MONOCHROME1 is inverted after the
  window (high values dark); multi-frame files use the middle frame (or ``slice_index``).
  The frame is shown radiologically as a NIfTI slice is, by its ImageOrientationPatient (a standard axial slice
  as stored; a flipped or transposed one turned; without the tag, as stored): :mod:`medgmae.twod.dicom_frames`.
  A colour (RGB, YBR) frame is not windowed, even when a window is given: it is divided by the largest value of its
  bit depth (``2 ** BitsStored - 1``: 255 for 8-bit samples, 65535 for 16-bit ones), as a picture file is; a
  PALETTE COLOR frame is read through its colour table, likewise.

Masks (:func:`read_mask`, :func:`read_reference`) are read from the values the file stores, without NIfTI's or
DICOM's rescale; a reference mask must be on the image's pixels (:mod:`medgmae.data.grid`).

:func:`read_image_source` also returns which slice (axis, index) and window were used. The PNG writers are in
:mod:`medgmae.twod.pngs` (re-exported here).

Errors name the file: missing (FileNotFoundError), unreadable or corrupt, empty or non-finite (ValueError).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medgmae.data.grid import same_grid_problem
from medgmae.data.reader import DICOM_FILE_SUFFIXES, is_multiframe_dicom
from medgmae.input_scale import IMAGE_SCALE_HOW, off_scale_problem
from medgmae.missing_paths import missing_path_message
from medgmae.twod.dicom_frames import read_dicom_frame
from medgmae.twod.nifti_slices import nifti_grid, only_slice_0, read_nifti_slice
from medgmae.twod.picture_notes import float_tiff_note, note_colour_16bit, note_transparency, transposed_reference_problem
from medgmae.twod.pngs import save_png, save_png_grid  # noqa: F401  (the writers, re-exported)
from medgmae.twod.windows import apply_window, window_setting
from medgmae.volume_units import LABEL_MAP_MAX_VALUES
from medgmae.whole_numbers import positive_sizes

__all__ = [
    "read_image",
    "read_image_source",
    "read_mask",
    "read_reference",
    "to_model_input",
    "save_png",
    "save_png_grid",
    "IMAGE_SUFFIXES",
    "is_windowed",
    "slice_text",
]

_PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_DICOM_SUFFIXES = DICOM_FILE_SUFFIXES
IMAGE_SUFFIXES = _PIL_SUFFIXES + _NIFTI_SUFFIXES + _DICOM_SUFFIXES
"""File-name endings of every readable 2D image, the one list used to scan image folders."""
_UINT16_MAX = 65535.0


def _image_kind(path: str | os.PathLike) -> str:
    """``"pil"``, ``"nifti"`` or ``"dicom"`` from the name (or the DICOM preamble); ValueError otherwise."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(_NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(_PIL_SUFFIXES):
        return "pil"
    if name.endswith(_DICOM_SUFFIXES):
        return "dicom"
    if has_dicom_preamble(path):
        return "dicom"
    raise ValueError(f"{path}: unsupported image type (expected one of {', '.join(IMAGE_SUFFIXES)} or a DICOM file)")


def has_dicom_preamble(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a DICOM file by content (``DICM`` after the 128-byte preamble), as scanners export
    files without an ending (``IM0001``); ``False`` for a file that cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def is_windowed(path: str | os.PathLike) -> bool:
    """Whether :func:`read_image` applies an intensity window to ``path``: NIfTI and DICOM files (by name, or by
    the DICOM preamble); PNG/JPEG/BMP/TIFF are divided by their integer type's maximum instead."""
    try:
        return _image_kind(path) != "pil"
    except ValueError:
        return False


def _read_pil(path: Path) -> tuple[np.ndarray, tuple[int, int] | None]:
    """``(C, H, W)`` float32 of a PIL-readable file, divided by its integer type's maximum (see the module doc), and
    the lowest and highest value a 16-bit (or 32-bit integer) picture stores (``None`` for other pictures)."""
    from PIL import Image, ImageOps, UnidentifiedImageError
    from PIL.Image import DecompressionBombError

    try:
        with Image.open(path) as opened:
            opened.load()
            pages = getattr(opened, "n_frames", 1)
            im = ImageOps.exif_transpose(opened)  # a photo's orientation tag applied: upright, as viewers show it
            mode = im.mode
            note_transparency(im, path)
            note_colour_16bit(path)
            if mode.startswith("I"):  # 16-bit ("I;16*") or 32-bit ("I") integers
                arr = np.asarray(im, dtype=np.float64)[None]
            elif mode in ("1", "L", "LA", "F"):
                arr = np.asarray(im if mode == "F" else im.convert("L"), dtype=np.float32)[None]
            else:
                arr = np.asarray(im.convert("RGB"), dtype=np.float32).transpose(2, 0, 1)
                if mode in ("P", "PA") and (arr == arr[:1]).all():  # a palette of greys: a grey image
                    arr = arr[:1]
    except DecompressionBombError as e:  # PIL's guard against huge images (a subclass of Exception only)
        raise ValueError(f"{path}: image too large for PIL to open ({e}); downscale it first (the models take "
                         "inputs of a few hundred pixels)") from e  # fmt: skip
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        float_tiff = float_tiff_note(path) if isinstance(e, UnidentifiedImageError) else ""
        if float_tiff:
            raise ValueError(f"{path}: {float_tiff}") from e
        empty = " (an empty file, 0 bytes)" if Path(path).is_file() and Path(path).stat().st_size == 0 else ""
        raise ValueError(f"{path}: not a readable image{empty} ({type(e).__name__}: {e})") from e
    if pages > 1:  # a stack (z, channels, time): which page is the image is not ours to guess
        raise ValueError(f"{path}: {pages} pages (a multi-page TIFF or an animated PNG); one image per file is read: "
                         "save the page wanted on its own, or a stack as NIfTI (its middle slice is read)")  # fmt: skip
    if mode == "F":
        return _checked_unit_floats(arr, path), None
    if not mode.startswith("I"):
        return arr / 255.0, None
    if arr.size and (arr.min() < 0 or arr.max() > _UINT16_MAX):
        raise ValueError(
            f"{path}: integer image with values in [{arr.min():g}, {arr.max():g}], outside the 16-bit range "
            f"[0, {_UINT16_MAX:g}]; save it as an 8- or 16-bit image, or as NIfTI/DICOM with a window"
        )
    stored = (int(arr.min()), int(arr.max())) if arr.size else None
    return (arr / _UINT16_MAX).astype(np.float32), stored


def _checked_unit_floats(arr: np.ndarray, path: Path) -> np.ndarray:
    """``arr``, a float picture (PIL mode ``F``: a float TIFF), read as already scaled: ValueError naming ``path``
    for a finite value outside ``[0, 1]`` (HU, 0..255), which clipping would flatten to 0 or 1."""
    finite = arr[np.isfinite(arr)]
    if finite.size and (finite.min() < 0.0 or finite.max() > 1.0):
        raise ValueError(f"{path}: floating-point image with values in [{finite.min():g}, {finite.max():g}], outside "
                         "[0, 1] (a float TIFF is read as already scaled to 0..1); scale it to [0, 1], or save it "
                         "as NIfTI and give a window")  # fmt: skip
    return arr


def _check_path(path: str | os.PathLike) -> Path:
    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(f"{path} is a folder; expected an image file")
    if not path.is_file():
        raise FileNotFoundError(missing_path_message(path, f"image not found: {path}"))
    return path


def read_image(
    path: str | os.PathLike, slice_index: int | None = None, window: Sequence[float] | None = None
) -> np.ndarray:
    """Read a 2D image as ``(C, H, W)`` float32 in ``[0, 1]`` (``C`` = 1 or 3).

    Args:
        path: PNG/JPEG/BMP/TIFF, NIfTI (2D, or a slice of a 3D volume) or DICOM file.
        slice_index: slice of a NIfTI volume (last RAS axis) or frame of a multi-frame DICOM (default: middle);
            a single-slice image or frame has only slice 0 (another is refused).
        window: ``(low, high)`` intensity window for NIfTI/DICOM (e.g. HU), in any spelling
            :func:`~medgmae.twod.windows.window_setting` reads; default: the DICOM window or the 0.5/99.5
            percentiles.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unsupported, unreadable or corrupt file, NaN values, a bad slice (any but 0 of a picture file)
            or a bad window.
    """
    return read_image_source(path, slice_index, window)[0]


def read_image_source(
    path: str | os.PathLike, slice_index: int | None = None, window: Sequence[float] | None = None
) -> tuple[np.ndarray, dict]:
    """:func:`read_image` (same arguments and errors), and where the pixels came from.

    Returns:
        ``(image, source)``: ``source`` is ``{"slice": {"axis", "index", "count"}, "window": [low, high],
        "window_source": ..., "stored_range": None}`` for NIfTI and DICOM, ``{"slice": None, "window": None,
        "window_source": None, "stored_range": ...}`` for picture files. ``axis`` is ``"axial"`` for a slice of a
        NIfTI volume (``index`` along the RAS-ordered volume, as ``slice_index`` counts), the plane of a
        single-slice NIfTI, or ``"frame"`` for DICOM;
        ``window_source`` is ``"given"``, ``"dicom file"`` (its first window), ``"percentiles 0.5/99.5"`` or
        ``"min-max"``. ``stored_range`` is ``(low, high)``, the lowest and highest value a 16-bit (or 32-bit
        integer) picture file stores before it is divided by 65535, ``None`` for other images.
    """
    path = _check_path(path)
    window = window_setting(window)
    kind = _image_kind(path)
    if kind == "pil":
        only_slice_0(path, slice_index)  # a picture file holds one slice
        arr, stored = _read_pil(path)
        if not np.isfinite(arr).all():
            raise ValueError(f"{path}: image contains NaN or infinite values")
        return np.clip(arr, 0.0, 1.0).astype(np.float32), {"slice": None, "window": None, "window_source": None,
                                                           "stored_range": stored}  # fmt: skip
    if kind == "nifti":
        arr, which = read_nifti_slice(path, slice_index)
        arr, used = apply_window(arr, path, window)
    else:
        arr, file_window, which, frame = read_dicom_frame(path, slice_index)
        if frame == "colour":  # scaled by its bit depth already: a window (a CT's, say) would flatten it to grey
            return np.clip(arr, 0.0, 1.0).astype(np.float32), {"slice": which, "window": None, "stored_range": None,
                                                               "window_source": "not windowed: a colour frame"}
        arr, used = apply_window(arr, path, window if window is not None else file_window,
                           "given" if window is not None else "dicom file")  # fmt: skip
        if frame == "monochrome1":  # windowed in the file's units, then shown as the modality does: high values dark
            arr = 1.0 - arr
    return arr, {"slice": which, **used, "stored_range": None}


def slice_text(which: dict | None) -> str | None:
    """The words for the slice :func:`read_image_source` read (its ``source["slice"]``): ``"axial slice 2 of 5
    (numbered from 0)"``, ``"frame 3 of 7 (numbered from 0)"``; ``None`` for a picture file (no slice)."""
    if which is None:
        return None
    name = which["axis"] if which["axis"] == "frame" else f"{which['axis']} slice"
    return f"{name} {which['index']} of {which['count']} (numbered from 0)"


def read_mask(path: str | os.PathLike, slice_index: int | None = None) -> np.ndarray:
    """Read a mask as an ``(H, W)`` bool array: non-zero stored values (in any channel) are foreground.

    The pixels are those :func:`read_image` shows for the same ``path`` and ``slice_index`` (same slice, same
    orientation); no intensity window applies. The values are those the file stores, before DICOM's
    ``RescaleSlope`` / ``RescaleIntercept`` or NIfTI's ``scl_slope`` / ``scl_inter``: a rescale maps stored
    values to a physical unit (e.g. HU), which a label has none of, and a mask written with a CT's header keeps
    the CT's intercept (-1024), which would turn every background pixel (stored 0, -1024 after the rescale) into
    foreground. Stored 0 is background in every format (PNG and other picture files have no rescale).

    Args:
        path: PNG/JPEG/BMP/TIFF, NIfTI or DICOM mask.
        slice_index: slice of a NIfTI volume or frame of a multi-frame DICOM (default: middle).

    Returns:
        The mask, ``True`` on foreground.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unsupported, unreadable or corrupt file, or a bad slice.
    """
    return np.any(np.nan_to_num(_stored_values(path, slice_index)) != 0, axis=0)


def _stored_values(path: str | os.PathLike, slice_index: int | None) -> np.ndarray:
    """``(C, H, W)``: the values a mask file stores (:func:`read_mask`; a picture file's divided by its type's
    maximum)."""
    path = _check_path(path)
    kind = _image_kind(path)
    if kind == "pil":
        only_slice_0(path, slice_index)  # a picture file holds one slice
        return _read_pil(path)[0]
    if kind == "nifti":
        return read_nifti_slice(path, slice_index, stored=True)[0]
    return read_dicom_frame(path, slice_index, stored=True)[0]


#: A reference mask holding more distinct values than this is no mask (a scan given as the reference, an 8-bit picture
#: of one too): the 3D readers' bound of a label map.
MASK_MAX_VALUES = LABEL_MAP_MAX_VALUES


def holds_several_slices(path: str | os.PathLike) -> bool:
    """Whether an image file holds more than one slice or frame, from its header (no pixel read): a NIfTI volume
    or a multi-frame DICOM (:func:`medgmae.data.reader.is_multiframe_dicom`); ``False`` for pictures, single slices
    and files that cannot be read (their reader names the problem when they are loaded)."""
    try:
        kind = _image_kind(path)
        if kind == "nifti":
            shape = nifti_grid(Path(path))[0]
            return len(shape) >= 3 and min(shape[:3]) > 1
    except (ValueError, OSError):
        return False
    return kind == "dicom" and is_multiframe_dicom(path)


def read_reference(
    reference: str | os.PathLike, image: str | os.PathLike, image_hw: Sequence[int], slice_index: int | None = None
) -> np.ndarray:
    """Read a reference mask (:func:`read_mask`, at the image's ``slice_index``), refusing one that does not
    cover the image's pixels, so that an IoU is never computed against a misplaced mask.

    When both files are NIfTI they must be on the same voxel grid (shape and affine, from the headers, before any
    voxel is read); otherwise the mask must have the image's ``H x W`` pixels as they are displayed (a picture-file
    mask of a NIfTI/DICOM image too: radiological, not as the array is stored; a transposed shape is said to be one).
    Either check is :func:`medgmae.data.grid.same_grid_problem` (its tolerance, its message naming both files).

    Args:
        reference: the mask file.
        image: the image file it belongs to.
        image_hw: the image's ``(H, W)`` as :func:`read_image` read it.
        slice_index: slice of a NIfTI volume or frame of a DICOM (default: middle), as for the image; a mask of
            one slice or frame is that slice's, whatever the index.

    Returns:
        The ``(H, W)`` bool mask.

    Raises:
        FileNotFoundError: ``reference`` does not exist.
        ValueError: an unreadable mask, or one off the image's pixels.
    """
    ref, img = _check_path(reference), Path(image)
    both_nifti = _image_kind(ref) == "nifti" and _image_kind(img) == "nifti"
    if both_nifti:
        problem = same_grid_problem(f"reference {ref}", *nifti_grid(ref), f"image {img}", *nifti_grid(img))
        if problem:
            raise ValueError(problem)
    values = _stored_values(ref, slice_index if holds_several_slices(ref) else None)  # one slice: the image's slice's
    if (distinct := np.unique(values).size) > MASK_MAX_VALUES:  # every non-zero pixel would be foreground: a meaningless IoU
        raise ValueError(f"reference {ref} holds {distinct} distinct values: an image, not a mask (a mask's pixels are "
                         "0 for background and a few values for foreground); give the mask of the image")  # fmt: skip
    mask = np.any(np.nan_to_num(values) != 0, axis=0)
    problem = None if both_nifti else same_grid_problem(f"reference {ref}", mask.shape, None, f"image {img}", image_hw, None)
    if problem:  # a transposed shape: most often a picture saved from a scan's stored array
        scan = _image_kind(ref) == "pil" and is_windowed(img)
        raise ValueError(transposed_reference_problem(problem, mask.shape, tuple(image_hw), scan))
    return mask


def to_model_input(image: np.ndarray | torch.Tensor, channels: int, size: Sequence[int]) -> torch.Tensor:
    """``(C, H, W)`` image in ``[0, 1]`` -> ``(1, channels, *size)`` float32 tensor: grey/RGB conversion and
    area/bilinear resize (:func:`read_image` reads files onto that scale).

    RGB to grey uses ITU-R 601 luma weights; grey to RGB repeats the channel. ``ValueError`` for another layout
    (naming the transpose or new axis that gives this one), NaN, or values on another scale (more than
    :data:`~medgmae.input_scale.SCALE_SLACK` beyond 0-1: an 8-bit image not divided by 255, a CT slice in HU, which
    were clipped to 0 and 1 without a word; the models warn of such a batch in the same words); a smaller overshoot
    (a resize's, noise's) is clipped. ``size`` is two whole numbers >= 1 (``16.0`` is taken as 16; one number, a
    fraction or 0 is refused).

    Args:
        image: the image, ``(C, H, W)`` in ``[0, 1]``.
        channels: the model's channels, 1 or 3.
        size: the model's ``(H, W)``.

    Returns:
        The ``(1, channels, *size)`` float32 batch.
    """
    x = torch.as_tensor(np.asarray(image, dtype=np.float32)).float()
    if x.dim() != 3 or x.shape[0] not in (1, 3):
        fix = (" (an (H, W, C) image: image.transpose(2, 0, 1))" if x.dim() == 3 and x.shape[-1] in (1, 3)
               else " (a grey (H, W) image: image[None])" if x.dim() == 2 else "")  # fmt: skip
        raise ValueError(f"image must be (C, H, W) with C = 1 or 3, got {tuple(x.shape)}{fix}")
    if not torch.isfinite(x).all():
        raise ValueError("the image holds NaN or infinite values")
    problem = off_scale_problem(x, float(x.min()), float(x.max()), "image", IMAGE_SCALE_HOW) if x.numel() else None
    if problem:
        raise ValueError(problem)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    size = positive_sizes(size, 2, "size (H, W)", scalar=False)  # 16.5 or 0 refused, not truncated or emptied
    if x.shape[0] == 3 and channels == 1:
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
    elif x.shape[0] == 1 and channels == 3:
        x = x.expand(3, -1, -1)
    x = x.unsqueeze(0)
    if tuple(x.shape[2:]) != size:
        shrink = x.shape[2] >= size[0] and x.shape[3] >= size[1]
        x = F.interpolate(x, size=size, mode="area") if shrink else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x.clamp(0.0, 1.0).contiguous()
