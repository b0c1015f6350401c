"""Scan files of the reconstruction: volumes in its ``(z, y, x)`` array order, NIfTI output, projection stacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medgmae.files import atomic_write, save_nifti_atomic

__all__ = ["load_volume", "save_nifti", "load_projections", "save_projections"]


def load_volume(path) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Read a 3D volume (NIfTI, NRRD, MetaImage or a DICOM series, through the toolkit's one reader
    :func:`medgmae.data.reader.read_volume`) as float32 ``(z, y, x)``: the reader's ``(i, j, k)`` order transposed.

    Returns:
        ``(volume (D, H, W), affine (4, 4) of the (i, j, k) = (x, y, z) order, voxel_size (sz, sy, sx))``.

    Raises:
        ValueError: missing, unreadable, not 3D or non-finite; the message names the file.
    """
    from medgmae.data.reader import read_volume

    try:
        vol = read_volume(path)
    except FileNotFoundError as e:
        raise ValueError(f"volume file {path} does not exist") from e
    return np.ascontiguousarray(vol.array.transpose(2, 1, 0)), vol.affine, vol.spacing[::-1]


def save_nifti(path, volume: np.ndarray, affine: np.ndarray) -> None:
    """Write a ``(z, y, x)`` volume as NIfTI (array order ``(x, y, z)``, ``affine`` for that order) atomically."""
    save_nifti_atomic(np.asarray(volume).transpose(2, 1, 0), affine, path, np.float32)


def load_projections(path) -> np.ndarray:
    """Read a projection stack ``(views, rows, cols)`` of line integrals as float32.

    ``.npy`` files hold that array as it is. A MetaImage (``.mha`` / ``.mhd``, RTK's format for projection stacks),
    NRRD or NIfTI stack is read through the toolkit's one reader (:func:`load_volume`): its last index runs over the
    views, its second over the detector rows and its first over the columns (ITK's ``(x, y, z)`` = (column, row,
    view), the array ``(views, rows, cols)`` SimpleITK gives); its spacing and origin are not used
    (``geometry.json`` holds the geometry).

    Raises:
        ValueError: missing, a folder, unreadable (truncated), not 3D or non-finite; the message names the file.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"projections {path} is a folder, not a file: give the projection stack's file "
                         "(.npy, .mha, .mhd, .nrrd, .nii or .nii.gz)")
    if not path.is_file():
        raise ValueError(f"projection file {path} does not exist")
    if path.suffix.lower() != ".npy":
        return load_volume(path)[0].astype(np.float32, copy=False)
    try:
        p = np.load(path, allow_pickle=False)
    except Exception as e:
        raise ValueError(f"cannot read projections {path}: {e}") from e
    if p.ndim != 3:
        raise ValueError(f"projections {path} must be (views, rows, cols), got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError(f"projections {path} contain NaN or Inf")
    return p.astype(np.float32, copy=False)


def save_projections(path, proj: np.ndarray) -> None:
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(proj, dtype=np.float32))
