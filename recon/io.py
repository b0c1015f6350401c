"""File helpers: atomic writes and NIfTI volumes in the reconstruction's ``(z, y, x)`` array order."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medgmae.engine import atomic_write

__all__ = ["atomic_write", "load_nifti", "save_nifti", "load_projections", "save_projections"]


def load_nifti(path) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Read a 3D NIfTI as float32 ``(z, y, x)`` (NIfTI array order ``(x, y, z)`` transposed).

    Returns:
        ``(volume (D, H, W), affine (4, 4), voxel_size (sz, sy, sx))``.
    """
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"volume file {path} does not exist")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as e:  # nibabel raises several types for corrupt files
        raise ValueError(f"cannot read volume {path}: {e}") from e
    data = np.squeeze(data)
    if data.ndim != 3:
        raise ValueError(f"volume {path} must be 3D, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise ValueError(f"volume {path} contains NaN or Inf voxels")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return np.ascontiguousarray(data.transpose(2, 1, 0)), np.asarray(img.affine, dtype=np.float64), zooms[::-1]


def save_nifti(path, volume: np.ndarray, affine: np.ndarray) -> None:
    """Write a ``(z, y, x)`` volume as NIfTI (array order ``(x, y, z)``) atomically."""
    import nibabel as nib

    vol = np.asarray(volume, dtype=np.float32).transpose(2, 1, 0)
    with atomic_write(path) as tmp:
        nib.save(nib.Nifti1Image(np.ascontiguousarray(vol), np.asarray(affine, dtype=np.float64)), str(tmp))


def load_projections(path) -> np.ndarray:
    """Read a ``.npy`` projection stack ``(views, rows, cols)`` as float32."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"projection file {path} does not exist")
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
