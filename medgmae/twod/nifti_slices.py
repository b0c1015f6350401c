"""NIfTI slices for the 2D tools: one slice of a NIfTI file, turned to the radiological view, and a file's voxel
grid from its header. :mod:`medgmae.twod.images` (the one 2D image reader) reads NIfTI files through here, as it
reads DICOM frames through :mod:`medgmae.twod.dicom_frames`.

Every file, 2D, single-slice or volume, is reoriented to RAS by its affine and shown radiologically (anterior up,
patient's right on the left), so that a 2D image, a one-slice volume and a slice of a volume with the same affine
give the same picture. Errors are ``ValueError`` naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medgmae.data.dicom_series import Refused
from medgmae.data.reader import check_affine, load_nifti, one_component, real_voxels

__all__ = ["read_nifti_slice", "nifti_plane", "nifti_grid", "only_slice_0", "open_nifti"]

_RAS_VIEWS = ("sagittal", "coronal", "axial")  # the plane normal to each RAS axis


def nifti_plane(data: np.ndarray, path: Path, slice_index: int | None) -> tuple[np.ndarray, dict]:
    """The ``(X', Y')`` plane to show of canonical (RAS) data: an axial slice of a volume, or a single-slice image;
    and which: ``{"axis": "axial", "index": k, "count": n}`` (``index`` along the RAS axis, as ``slice_index``)."""
    if data.ndim == 3 and min(data.shape) > 1:
        k = data.shape[2] // 2 if slice_index is None else int(slice_index)
        if not 0 <= k < data.shape[2]:
            raise ValueError(f"{path}: slice {k} is outside the volume's {data.shape[2]} slices")
        return data[:, :, k], {"axis": "axial", "index": k, "count": int(data.shape[2])}
    plane = np.squeeze(data)
    if plane.ndim != 2:
        raise ValueError(f"{path}: expected a 2D image or a 3D volume, got shape {data.shape}")
    only_slice_0(path, slice_index)
    axis = _RAS_VIEWS[list(data.shape).index(1)] if data.ndim == 3 else "axial"
    return plane, {"axis": axis, "index": 0, "count": 1}  # a single slice: its two in-plane axes, RAS order


def only_slice_0(path: Any, slice_index: int | None) -> None:
    """Refuse a ``slice_index`` other than 0 (or ``None``) of a single-slice image (a NIfTI of one slice, a picture
    file), naming ``path``."""
    if slice_index is not None and int(slice_index) != 0:
        raise ValueError(f"{path}: slice {int(slice_index)} is outside the image's 1 slice (numbered from 0)")


def read_nifti_slice(path: Path, slice_index: int | None, stored: bool = False) -> tuple[np.ndarray, dict]:
    """One slice of a NIfTI file, ``(1, H, W)``, and which (see :func:`nifti_plane`): every file, 2D, single-slice
    or volume, is first reoriented to RAS by its affine, then shown radiologically (the higher R/A/S coordinate of
    each in-plane axis first: anterior (or superior) up, patient's right on the left). ``stored``: the stored values,
    without ``scl_slope`` / ``scl_inter``."""
    import nibabel as nib

    img = open_nifti(path)
    try:
        if stored:
            img = nib.Nifti1Image(np.asanyarray(img.dataobj.get_unscaled()), img.affine)
        shape = tuple(img.shape)
        if len(shape) > 3 and all(s == 1 for s in shape[3:]):
            img = img.slicer[(slice(None),) * 3 + (0,) * (len(shape) - 3)]
        elif len(shape) == 2:
            img = nib.Nifti1Image(np.asarray(img.dataobj)[:, :, None], img.affine)
        if len(img.shape) == 3:
            img = nib.as_closest_canonical(img)
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as e:  # nibabel raises several types for corrupt files
        raise ValueError(f"{path}: not a readable NIfTI file ({type(e).__name__}: {e})") from e
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 2D image or a 3D volume, got shape {data.shape}")
    plane, which = nifti_plane(data, path, slice_index)
    return plane[::-1, ::-1].T[None].copy(), which


def nifti_grid(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    """The voxel grid of a NIfTI file from its header (no voxel read): its first three axes and its affine."""
    img = open_nifti(path)
    return tuple(img.shape[:3]), np.asarray(img.affine, dtype=np.float64)


def open_nifti(path: Path) -> Any:
    """:func:`medgmae.data.reader.load_nifti` with its errors as ``ValueError`` naming the file; an RGB(A) NIfTI (a
    structured dtype, one field a channel: NumPy's DTypePromotionError when read) and a complex-valued one are
    refused as the 3D reader refuses them, and so is a voxel-to-world matrix that is singular or not finite
    (:func:`medgmae.data.reader.check_affine`)."""
    try:
        img = load_nifti(path)
        one_component(len(img.get_data_dtype().names or ()) or 1)
        real_voxels(img.get_data_dtype())
        affine = np.asarray(img.affine, dtype=np.float64)
    except Refused as e:  # the opener's own refusal says what to do
        raise ValueError(f"{path}: {e}") from e
    except Exception as e:  # nibabel raises several types for corrupt files
        raise ValueError(f"{path}: not a readable NIfTI file ({type(e).__name__}: {e})") from e
    check_affine(affine, path)  # the slice is oriented by it, and a volume's reader refuses it too
    return img
