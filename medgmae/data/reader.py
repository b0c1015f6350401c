"""Reading CT volumes with their geometry: the toolkit's one 3D reader.

NIfTI (``.nii``, ``.nii.gz``) is read with nibabel; NRRD, MetaImage (``.mha``, ``.mhd``) and DICOM series (a
folder of DICOM slices, with or without the ``.dcm`` ending) with SimpleITK, which reads their geometry (origin,
spacing, direction) correctly without the ``itk`` package that MONAI's ITK reader would need.

Axis order and world frame (the toolkit's convention, see :mod:`medgmae.preprocessing`): the array is ``(I, J, K)``
in the file's index order (for SimpleITK images, ``(x, y, z)`` index order, i.e. SimpleITK's numpy array
transposed), and ``affine`` maps index ``(i, j, k, 1)`` to RAS+ world millimetres (ITK's LPS world converted).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

__all__ = ["Volume", "read_volume", "is_volume_path", "volume_stem", "VOLUME_SUFFIXES", "LoadVolumed"]

#: File endings read as volumes (a folder holding a DICOM series is one too: :func:`is_volume_path`).
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Volume:
    """A 3D volume and its geometry.

    Attributes:
        array: ``(I, J, K)`` float32 voxel values (HU for CT).
        affine: ``(4, 4)`` float64 index -> RAS+ world (mm).
        path: the file or folder it was read from.
    """

    array: np.ndarray
    affine: np.ndarray
    path: Path

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (mm) along the array axes: the norms of the affine's columns."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))


def volume_stem(path: str | Path) -> str:
    """The file (or DICOM folder) name without its volume extension (``ct.nii.gz`` -> ``ct``)."""
    name = Path(path).name
    suffix = next((s for s in VOLUME_SUFFIXES if name.lower().endswith(s)), "")
    return name[: len(name) - len(suffix)] if suffix else name


def is_volume_path(path: str | os.PathLike) -> bool:
    """A file with a volume ending, or a folder holding a DICOM series: ``.dcm`` files, or files without that
    ending in which GDCM (through SimpleITK) finds a series (many scanners and PACS exports name slices
    ``IM0001`` or by number)."""
    p = Path(path)
    if p.is_dir():
        if any(p.glob("*.dcm")):
            return True
        import SimpleITK as sitk

        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(p)))
    return p.name.lower().endswith(VOLUME_SUFFIXES)


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    img = nib.load(str(path))
    return np.asarray(img.dataobj, dtype=np.float32), np.asarray(img.affine, dtype=np.float64)


def _dicom_series_files(folder: Path) -> tuple[str, ...]:
    """The slice files of the one DICOM series in ``folder``, sorted by GDCM along the slice normal.

    Raises:
        ValueError: no series, or several (a scout, a second reconstruction kernel, a contrast phase: reading one of
            them silently would train on or infer from the wrong images); the message lists each with its slice count
            and description.
    """
    import SimpleITK as sitk

    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise ValueError("no DICOM series found in the folder")
    if len(ids) == 1:
        return sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0])
    found = []
    for uid in ids:
        names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
        info = sitk.ImageFileReader()
        info.SetFileName(names[0])
        info.ReadImageInformation()
        desc = info.GetMetaData("0008|103e").strip() if info.HasMetaDataKey("0008|103e") else "no description"
        found.append(f"{uid} ({len(names)} slices, {desc!r})")
    raise ValueError(
        f"the folder holds {len(ids)} DICOM series; put each in its own folder and give that one: " + "; ".join(found)
    )


def _read_sitk(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(_dicom_series_files(path))
        img = reader.Execute()
    else:
        img = sitk.ReadImage(str(path))
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"expected one value per voxel, got {img.GetNumberOfComponentsPerPixel()} components")
    dim = img.GetDimension()
    arr = sitk.GetArrayViewFromImage(img).astype(np.float32).transpose(tuple(range(dim - 1, -1, -1)))
    if dim != 3:
        return arr, np.eye(4)  # rejected by the caller with the shape
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(img.GetSpacing(), dtype=np.float64)
    lps[:3, 3] = img.GetOrigin()
    return np.ascontiguousarray(arr), _LPS_TO_RAS @ lps


def read_volume(path: str | os.PathLike, check_finite: bool = True) -> Volume:
    """Read a 3D volume (NIfTI, NRRD, MetaImage or a DICOM series folder) with its RAS affine.

    Args:
        path: the file or DICOM folder.
        check_finite: reject NaN / infinite voxels.

    Returns:
        The :class:`Volume` (array ``(I, J, K)`` float32, affine index -> RAS mm).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unreadable or corrupt file, not a single 3D volume, non-finite voxels or a singular affine;
            the message names the file.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"volume not found: {p}")
    if not (p.is_dir() or p.name.lower().endswith(VOLUME_SUFFIXES)):
        raise ValueError(f"{p}: not a volume file (readable: {', '.join(VOLUME_SUFFIXES)} or a DICOM folder)")
    try:
        arr, affine = _read_nifti(p) if p.name.lower().endswith((".nii", ".nii.gz")) else _read_sitk(p)
    except Exception as e:  # nibabel / SimpleITK raise many types for corrupt or truncated files
        raise ValueError(f"{p}: cannot read the volume ({type(e).__name__}: {e})") from e
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise ValueError(f"{p}: expected a single 3D volume, got an array of shape {arr.shape} (2D and 4D images are not supported)")
    if check_finite and not np.isfinite(arr).all():
        raise ValueError(f"{p}: the volume contains NaN or infinite voxels")
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError(f"{p}: the voxel-to-world matrix is singular or not finite:\n{affine}")
    return Volume(arr, affine, p)


class LoadVolumed(MapTransform):
    """MONAI dictionary transform: replace path entries by channel-first MetaTensors ``(1, I, J, K)`` read with
    :func:`read_volume`, whose ``affine`` MONAI's spatial transforms (``Orientationd``, ``Spacingd``) then use.

    The meta data hold what MONAI's ``LoadImaged`` records (``filename_or_obj``, ``original_affine``, ``affine``,
    ``spatial_shape``, ``space``), so inversion (``Invertd``) and writers of results in the input's space work
    unchanged; unlike ``LoadImaged`` it reads MetaImage and DICOM series without the ``itk`` package.

    Args:
        keys: keys holding paths.
        allow_missing_keys: skip keys absent from the dict.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            vol = read_volume(d[key])
            meta = {"filename_or_obj": str(vol.path), "original_affine": vol.affine.copy(), "space": "RAS",
                    "spatial_shape": np.asarray(vol.array.shape)}  # fmt: skip
            d[key] = MetaTensor(torch.from_numpy(vol.array)[None], affine=torch.from_numpy(vol.affine), meta=meta)
        return d
