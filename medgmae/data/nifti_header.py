"""Opening NIfTI files with the toolkit's checks of their header: a gzip file misnamed ``.nii``, a plain file named
``.nii.gz``, a qform that places the voxels elsewhere than the sform, a file that states no frame at all, and
spatial units other than millimetres (read in mm, as ITK and 3D Slicer read them). Every
NIfTI reader of the toolkit (3D volumes, 2D slices, projection stacks) opens files through :func:`load_nifti`."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from medgmae.data.dicom_series import Refused
from medgmae.data.grid import grid_offset_mm, nearest_unsheared_frame
from medgmae.files import FRAME_TOLERANCE_MM, SHEARED_SFORM_NOTE

__all__ = ["load_nifti"]

logger = logging.getLogger("medgmae.data.reader")  # the reader's warnings, as they were named before

def load_nifti(path: str | os.PathLike):
    """The nibabel image of a NIfTI file after the toolkit's checks, how the 3D reader and the 2D image reader
    (:mod:`medgmae.twod.nifti_slices`) open NIfTI images: a gzip file named ``.nii`` is refused (nibabel would not
    recognise it), a file named ``.nii.gz`` that is not gzip-compressed is read as the plain NIfTI it is (as ITK
    and 3D Slicer read it; nibabel says "is not a gzip file"), a qform that places voxels elsewhere than the sform
    is warned about (the sform is used), and so is a file that states no frame at all (qform and sform codes 0:
    nibabel's default frame is not ITK's). A file whose spatial unit (``xyzt_units``) is metres or micrometres is
    returned in millimetres, the toolkit's unit (:func:`_in_mm`).

    Raises:
        Refused: a gzip-compressed file named ``.nii``.
    """
    import nibabel as nib

    path = Path(path)
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"  # gzip's magic number
    if path.name.lower().endswith(".nii") and gzipped:  # nibabel would not recognise the file type
        raise Refused("the file is gzip-compressed but named .nii: rename it to .nii.gz")
    if path.name.lower().endswith(".nii.gz") and not gzipped:  # nibabel goes by the name: read the file as it is
        view = _mapped(path)  # what the image's data proxies read (header-only callers read no voxel)
        head = view.read(4)
        view.seek(0)
        nifti2 = 540 in (int.from_bytes(head, "little"), int.from_bytes(head, "big"))  # its header's size
        kind = nib.Nifti2Image if nifti2 else nib.Nifti1Image
        img = kind.from_file_map({"image": nib.FileHolder(fileobj=view)})
    else:
        img = nib.load(str(path))
    _warn_if_no_frame(img, path)  # by the file's own codes (an image made in mm below states a frame)
    img = _in_mm(img, path)  # before the frames are compared: their distance in mm
    _warn_if_frames_disagree(img, path)
    return img


def _mapped(path: Path):
    """The file's bytes as a read-only memory map (as nibabel maps a plain ``.nii``): no file stays open, and a data
    proxy derived from the image (``img.dataobj.reshape(...)``, :func:`_in_mm`'s image) reads it as long as it is
    kept, whatever was freed before it (a stream closed with the first image failed them). An empty file gives an
    empty stream: nibabel's own error names the missing header; a file that cannot be mapped is read whole."""
    import io
    import mmap

    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return io.BytesIO(b"")
        try:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):  # a file system that maps no file: the bytes read whole, as nibabel falls back
            return io.BytesIO(f.read())


#: Millimetres per NIfTI spatial unit other than mm; "unknown" is taken as mm, as ITK takes it.
MM_PER_UNIT = {"meter": 1000.0, "micron": 1e-3}


def _in_mm(img, path: Path):
    """``img`` with its voxel sizes, qform and sform in millimetres where its header states metres or micrometres
    (the voxels are not read: the new image reads them through the same data proxy). nibabel and MONAI take the
    numbers as they stand, whatever the unit; ITK, and so 3D Slicer, scales them to mm, and the toolkit writes mm:
    a file stating 0.0007 m voxels would otherwise be read as 0.0007 mm ones, and its outputs drawn 1000 times
    smaller than it and far from it in a viewer."""
    space, time = img.header.get_xyzt_units()
    scale = MM_PER_UNIT.get(space)
    if scale is None:
        return img
    header = img.header.copy()
    header.set_xyzt_units("mm", time)
    zooms = list(header.get_zooms())
    header.set_zooms([z * scale for z in zooms[:3]] + zooms[3:])
    to_mm = np.diag([scale, scale, scale, 1.0])
    for name in ("qform", "sform"):
        affine, code = getattr(img, f"get_{name}")(coded=True)
        if code:
            getattr(header, f"set_{name}")(to_mm @ affine, int(code))
    if str(path) not in _UNITS_NOTED:  # once per file: epochs read it again
        _UNITS_NOTED.add(str(path))
        logger.info("%s states its voxel sizes in %s: read in mm (x %g), as ITK and 3D Slicer read it", path,
                    "metres" if space == "meter" else "micrometres", scale)
    return type(img)(img.dataobj, header.get_best_affine(), header)


_UNITS_NOTED: set[str] = set()


def _warn_if_no_frame(img, path: Path) -> None:
    """Warn when a NIfTI states no frame at all (qform and sform codes both 0): nibabel and MONAI then place it by
    its voxel sizes alone (x flipped, centred on the grid), ITK-based viewers (3D Slicer) by the identity LPS
    frame at origin 0, so the toolkit's outputs, written in nibabel's frame with both codes set, show mirrored front
    to back and shifted against the input there."""
    if img.header.get("sform_code", 0) or img.header.get("qform_code", 0) or str(path) in _FRAMES_WARNED:
        return
    _FRAMES_WARNED.add(str(path))
    logger.warning(
        "%s states no orientation (its qform and sform codes are 0): it is read with nibabel's default frame (voxel "
        "sizes only, x flipped), which 3D Slicer and other ITK-based viewers do not use, so outputs written from it "
        "will not overlay the input there; set its frame (e.g. nibabel's img.set_sform(affine, code=1) with the "
        "scanner's affine) to avoid this", path,
    )  # fmt: skip


_FRAMES_WARNED: set[str] = set()


def _warn_if_frames_disagree(img, path: Path) -> None:
    """Warn when a NIfTI holds two different frames: qform and sform both set (codes > 0) but placing a corner voxel
    more than :data:`FRAME_TOLERANCE_MM` apart. nibabel, MONAI and this toolkit use the sform; ITK-based tools
    (SimpleITK, 3D Slicer) read the qform of such a file, so the toolkit's outputs (written with the sform as both
    forms) do not overlay the input there; a sheared sform beside its nearest qform (an unresampled gantry tilt) is
    shown there in the qform's place, while the toolkit's outputs from it state the sform alone (qform code 0, which
    those tools refuse to open rather than misplace), which the warning says instead. A file earlier releases wrote
    so (the nearest qform, marked :data:`SHEARED_SFORM_NOTE`) is read without a warning. Why not refuse: many
    pipelines (e.g. FSL registration) write such files on purpose, and MONAI reads them this way."""
    sform, scode = img.get_sform(coded=True)
    qform, qcode = img.get_qform(coded=True)
    if not scode or not qcode or sform is None or qform is None:
        return
    apart = grid_offset_mm(img.shape[:3], sform, qform)  # the grid module's measure: the farthest corner voxel
    if apart > FRAME_TOLERANCE_MM and str(path) not in _FRAMES_WARNED:  # once per file: epochs read it again
        nearest = nearest_unsheared_frame(sform)  # the nearest frame a qform states (a singular sform has none)
        sheared = nearest is not None and grid_offset_mm(img.shape[:3], sform, nearest) > FRAME_TOLERANCE_MM
        # the sheared sform beside its nearest qform: a converter's usual pair, and what earlier releases wrote
        paired = sheared and grid_offset_mm(img.shape[:3], qform, nearest) <= FRAME_TOLERANCE_MM
        marked = img.header["descrip"].tobytes().rstrip(b"\0") == SHEARED_SFORM_NOTE.encode()  # the toolkit's output
        if paired and marked:
            return  # as the toolkit wrote it (a header kept by a later edit keeps the mark: the qform is compared)
        _FRAMES_WARNED.add(str(path))
        if paired:
            logger.warning(
                "%s: its sform is sheared (e.g. a gantry-tilted scan not resampled) and its qform is the nearest "
                "unsheared frame, placing voxels up to %.3g mm apart; the sform is used (as by nibabel and MONAI). "
                "3D Slicer and other ITK-based viewers show this file in the qform's place; the volumes written from "
                "it state the sform only (qform code 0), which those viewers refuse to open rather than show that far "
                "off, and world positions the toolkit computes from it (Gaussian centres, PLY files) follow the sform "
                "too: resample the volume onto an unsheared grid to avoid this", path, apart,
            )  # fmt: skip
            return
        advice = ("the sform is sheared (e.g. a gantry-tilted scan not resampled), which no qform can state: resample "
                  "the volume onto an unsheared grid to avoid this" if sheared else
                  "make the two agree, e.g. nibabel's img.set_qform(img.get_sform()), to avoid this")  # fmt: skip
        logger.warning(
            "%s: its qform and sform place voxels up to %.3g mm apart; the sform is used (as by nibabel and MONAI), "
            "but ITK-based viewers such as 3D Slicer show the qform, so outputs written from it will not overlay "
            "the input there (%s)", path, apart, advice,
        )  # fmt: skip
