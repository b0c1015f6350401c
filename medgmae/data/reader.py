"""Reading CT volumes with their geometry: the toolkit's one 3D reader.

NIfTI (``.nii``, ``.nii.gz``) is read with nibabel; NRRD, MetaImage (``.mha``, ``.mhd``) and DICOM series (a
folder of DICOM slices, with or without the ``.dcm`` ending) with SimpleITK, which reads their geometry (origin,
spacing, direction) correctly without the ``itk`` package that MONAI's ITK reader would need.

Axis order and world frame (the toolkit's convention, see :mod:`medgmae.preprocessing`): the array is ``(I, J, K)``
in the file's index order (for SimpleITK images, ``(x, y, z)`` index order, i.e. SimpleITK's numpy array
transposed), and ``affine`` maps index ``(i, j, k, 1)`` to RAS+ world millimetres (ITK's LPS world converted).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from medgmae.data.grid import grid_offset_mm

__all__ = ["Volume", "read_volume", "is_volume_path", "volume_stem", "VOLUME_SUFFIXES", "LoadVolumed"]

#: File endings read as volumes (a folder holding a DICOM series is one too: :func:`is_volume_path`).
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
logger = logging.getLogger(__name__)


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


def volume_stem(path: str | Path, suffixes: Sequence[str] = VOLUME_SUFFIXES) -> str:
    """The file (or DICOM folder) name without its ending among ``suffixes`` (``ct.nii.gz`` -> ``ct``; other dots
    are kept: ``1.2.840.5.dcm`` -> ``1.2.840.5`` with ``.dcm`` among them); the longest matching ending is cut."""
    name = Path(path).name
    suffix = max((s for s in suffixes if name.lower().endswith(s.lower())), key=len, default="")
    return name[: len(name) - len(suffix)] if suffix else name


def is_volume_path(path: str | os.PathLike) -> bool:
    """A file with a volume ending, or a folder holding a DICOM series: ``.dcm`` files, or files without that
    ending in which GDCM (through SimpleITK) finds a series (many scanners and PACS exports name slices
    ``IM0001`` or by number)."""
    p = Path(path)
    if p.is_dir():
        return any(p.glob("*.dcm")) or bool(_series_ids(p))
    return p.name.lower().endswith(VOLUME_SUFFIXES)


def _series_ids(folder: Path) -> tuple[str, ...]:
    """GDCM's DICOM series in ``folder``, without ITK's console warning for a folder that has none (callers say
    so in their own words, naming the folder)."""
    import SimpleITK as sitk

    if not any(f.is_file() for f in folder.iterdir()):
        return ()
    warn = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return tuple(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warn)


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    img = nib.load(str(path))
    _warn_if_frames_disagree(img, path)
    return np.asarray(img.dataobj, dtype=np.float32), np.asarray(img.affine, dtype=np.float64)


#: How far (mm, at any corner voxel) a NIfTI's qform and sform may place a voxel apart and still count as one frame.
FRAME_TOLERANCE_MM = 1e-3


_FRAMES_WARNED: set[str] = set()


def _warn_if_frames_disagree(img, path: Path) -> None:
    """Warn when a NIfTI holds two different frames: qform and sform both set (codes > 0) but placing a corner voxel
    more than :data:`FRAME_TOLERANCE_MM` apart. nibabel, MONAI and this toolkit use the sform; ITK-based tools
    (SimpleITK, 3D Slicer) read the qform of such a file, so the toolkit's outputs (written with the sform as both
    forms) do not overlay the input there. Why not refuse: many pipelines (e.g. FSL registration) write such files
    on purpose, and MONAI reads them this way."""
    sform, scode = img.get_sform(coded=True)
    qform, qcode = img.get_qform(coded=True)
    if not scode or not qcode or sform is None or qform is None:
        return
    apart = grid_offset_mm(img.shape[:3], sform, qform)  # the grid module's measure: the farthest corner voxel
    if apart > FRAME_TOLERANCE_MM and str(path) not in _FRAMES_WARNED:  # once per file: epochs read it again
        _FRAMES_WARNED.add(str(path))
        logger.warning(
            "%s: its qform and sform place voxels up to %.3g mm apart; the sform is used (as by nibabel and MONAI), "
            "but ITK-based viewers such as 3D Slicer show the qform, so outputs written from it will not overlay "
            "the input there (make the two agree, e.g. nibabel's img.set_qform(img.get_sform()), to avoid this)",
            path, apart,
        )  # fmt: skip


class _Refused(ValueError):
    """A file or DICOM folder the reader refuses by its own checks (its message needs no exception type)."""


def _dicom_series_files(folder: Path) -> tuple[str, ...]:
    """The slice files of the one DICOM series in ``folder``, sorted by GDCM along the slice normal.

    Raises:
        ValueError: no series, or several (a scout, a second reconstruction kernel, a contrast phase: reading one of
            them silently would train on or infer from the wrong images); the message lists each with its slice count
            and description.
    """
    import SimpleITK as sitk

    ids = _series_ids(folder)
    if not ids:
        files = sum(f.is_file() for f in folder.iterdir())
        what = f"none of its {files} files is" if files > 1 else "its one file is not" if files else "it holds no files"
        raise _Refused(f"no DICOM series found in the folder ({what}{' a DICOM slice' if files else ''})")
    if len(ids) == 1:
        return sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0])
    found = []
    for uid in ids:
        names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
        info = sitk.ImageFileReader()
        info.SetFileName(names[0])
        info.ReadImageInformation()
        desc = info.GetMetaData("0008|103e").strip() if info.HasMetaDataKey("0008|103e") else "no description"
        found.append(f"{uid} ({len(names)} slice{'' if len(names) == 1 else 's'}, {desc!r})")
    raise _Refused(
        f"the folder holds {len(ids)} DICOM series; put each in its own folder and give that one: " + "; ".join(found)
    )


def _slice_positions(reader) -> np.ndarray | None:
    """Each slice's ImagePositionPatient projected on the slice normal (the cross product of the first slice's
    ImageOrientationPatient rows), in mm; ``None`` when a slice lacks either tag (nothing to check against)."""
    keys = ("0020|0032", "0020|0037")
    n = len(reader.GetFileNames())
    if not all(reader.HasMetaDataKey(i, k) for i in range(n) for k in keys):
        return None
    try:
        iop = np.asarray(reader.GetMetaData(0, keys[1]).split("\\"), dtype=np.float64)
        ipp = np.asarray([reader.GetMetaData(i, keys[0]).split("\\") for i in range(n)], dtype=np.float64)
    except ValueError:
        return None
    if iop.shape != (6,) or ipp.shape != (n, 3):
        return None
    return ipp @ np.cross(iop[:3], iop[3:])


#: Per-slice DICOM attributes every slice of a series must share (tag, name, numeric tolerance or ``None``: exact).
_SHARED_TAGS = (("0020|0037", "ImageOrientationPatient", 1e-4), ("0028|0030", "PixelSpacing", 1e-4),
                ("0028|0010", "Rows", None), ("0028|0011", "Columns", None))  # fmt: skip


def _check_slices_agree(reader) -> None:
    """Refuse a series whose slices differ in orientation, pixel spacing or size (a localizer or a reformatted
    slice filed under the series' UID): ITK stacks them as if they were alike. The odd slice is the one differing
    from the most common value; the message names it, the attribute and both values.

    Raises:
        ValueError: naming the file, the attribute and the values.
    """
    names = [Path(f).name for f in reader.GetFileNames()]
    for tag, what, tol in _SHARED_TAGS:
        if not all(reader.HasMetaDataKey(i, tag) for i in range(len(names))):
            continue
        texts = [reader.GetMetaData(i, tag).strip() for i in range(len(names))]
        try:
            values = [np.asarray(t.split("\\"), dtype=np.float64) for t in texts]
        except ValueError:
            continue
        common = max(set(texts), key=texts.count)
        ref = values[texts.index(common)]
        for name, value in zip(names, values):
            same = value.shape == ref.shape and (np.allclose(value, ref, rtol=tol, atol=tol) if tol else (value == ref).all())
            if not same:
                shown = lambda v: "[" + ", ".join(f"{x:.4g}" for x in v) + "]"  # noqa: E731
                raise _Refused(f"slice {name} has {what} {shown(value)} but the series' other slices {shown(ref)} (a "
                               "localizer or another image filed under the same series? move it out of the folder)")  # fmt: skip


def _warn_if_not_ct(reader, folder: Path) -> None:
    """Warn once when a series' Modality is not CT: the toolkit reads values as HU (an MR series reads without
    error and trains or reconstructs as nonsense)."""
    if reader.HasMetaDataKey(0, "0008|0060"):
        modality = reader.GetMetaData(0, "0008|0060").strip()
        if modality and modality.upper() != "CT":
            logger.warning("%s: a DICOM series of modality %s, read as CT in HU (the toolkit expects CT)", folder, modality)


def _check_even_slices(reader) -> None:
    """Refuse a series whose slices are not evenly spaced along the normal (a missing or repeated slice).

    ITK reads such a series as evenly spaced at the average step (only a warning on stderr), which puts every slice
    but the ends at the wrong world position. The tolerance, 1 % of the spacing but at least 0.02 mm, allows for
    DICOM's rounding of the position tags.

    Raises:
        ValueError: naming the slice count and, when most steps agree, that usual step (the median) and the
            largest deviating step with the files and positions on either side; when no step is shared by most
            (e.g. 3 slices, one gap), the smallest and the largest step, each with its files and positions.
    """
    pos = _slice_positions(reader)
    if pos is None or len(pos) < 3:
        return
    steps = np.diff(pos)
    expected = float(np.median(steps))
    usual = np.abs(steps - expected) <= max(0.01 * abs(expected), 0.02)
    if usual.all():
        return
    names = [Path(f).name for f in reader.GetFileNames()]

    def step(i: int) -> str:
        return f"{names[i]} (position {pos[i]:.4g} mm) to {names[i + 1]} ({pos[i + 1]:.4g} mm)"

    head = (f"the {len(pos)} slices of the DICOM series are not evenly spaced along the slice normal (a missing or "
            "repeated slice?): ")  # fmt: skip
    if usual.sum() * 2 > len(steps):
        worst = int(np.argmax(np.abs(steps - expected)))
        raise _Refused(head + f"the usual step is {abs(expected):.4g} mm, but {step(worst)} is {abs(steps[worst]):.4g} mm")
    small, large = int(np.argmin(np.abs(steps))), int(np.argmax(np.abs(steps)))
    raise _Refused(
        head + f"no step is shared by most slices: the smallest, {step(small)}, is {abs(steps[small]):.4g} mm and "
        f"the largest, {step(large)}, is {abs(steps[large]):.4g} mm"
    )


def _read_sitk_file(path: Path):
    """One image file through SimpleITK: header first, then the voxel data, each failure one line."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise _Refused("not a readable image file (its header cannot be read)") from e
    try:
        return reader.Execute()
    except RuntimeError as e:  # ITK's text ends "No such file or directory" for a file that exists
        raise _Refused("the header reads but the voxel data do not: the file is truncated (incomplete) or "
                           "corrupt") from e


def _read_sitk(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(_dicom_series_files(path))
        reader.MetaDataDictionaryArrayUpdateOn()
        warn = sitk.ProcessObject.GetGlobalWarningDisplay()
        sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK's uneven-slices warning: refused below, clearly
        try:
            img = reader.Execute()
        finally:
            sitk.ProcessObject.SetGlobalWarningDisplay(warn)
        _check_slices_agree(reader)
        _check_even_slices(reader)
        _warn_if_not_ct(reader, path)
    else:
        img = _read_sitk_file(path)
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
        ValueError: unreadable or corrupt file, not a single 3D volume, a DICOM folder without exactly one series
            or whose slices are not evenly spaced (a missing slice), non-finite voxels or a singular affine; the
            message names the file.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"volume not found: {p}")
    if not (p.is_dir() or p.name.lower().endswith(VOLUME_SUFFIXES)):
        if p.suffix.lower() in (".dcm", ".ima", ".dicom"):
            raise ValueError(f"{p}: one DICOM slice, not a volume: give the folder holding its series ({p.parent})")
        raise ValueError(f"{p}: not a volume file (readable: {', '.join(VOLUME_SUFFIXES)} or a DICOM folder)")
    try:
        arr, affine = _read_nifti(p) if p.name.lower().endswith((".nii", ".nii.gz")) else _read_sitk(p)
    except _Refused as e:
        raise ValueError(f"{p}: {e}") from e
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
