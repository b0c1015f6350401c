"""Reading CT volumes with their geometry: the toolkit's one 3D reader.

NIfTI (``.nii``, ``.nii.gz``) is read with nibabel; NRRD, MetaImage (``.mha``, ``.mhd``) and DICOM series (a
folder of DICOM slices, with or without the ``.dcm`` ending) with SimpleITK, which reads their geometry (origin,
spacing, direction) correctly without the ``itk`` package that MONAI's ITK reader would need.

Axis order and world frame (the toolkit's convention, see :mod:`medgmae.preprocessing`): the array is ``(I, J, K)``
in the file's index order (for SimpleITK images, ``(x, y, z)`` index order, i.e. SimpleITK's numpy array
transposed), and ``affine`` maps index ``(i, j, k, 1)`` to RAS+ world millimetres (ITK's LPS world converted).

Neither torch nor MONAI is imported here until ``LoadVolumed`` (MONAI's transform reading with :func:`read_volume`)
is first asked for: a command that only reads volumes does not load them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from medgmae.data.fingerprint import detached_data_file
from medgmae.data.dicom_series import Refused, read_series, series_ids, warn_if_modality_not_ct
from medgmae.data.nifti_header import load_nifti
from medgmae.missing_paths import missing_path_message
from medgmae.words import plural

__all__ = [
    "Volume", "read_volume", "is_volume_path", "volume_stem", "load_nifti", "is_multiframe_dicom", "VOLUME_SUFFIXES",
    "DICOM_FILE_SUFFIXES", "LoadVolumed", "volume_grid", "whole_labels", "LABEL_TOLERANCE", "one_component",
    "real_voxels", "check_affine",
]  # fmt: skip

#: File endings read as volumes (a folder holding a DICOM series is one too: :func:`is_volume_path`).
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Endings of DICOM files: one slice of a series, or a whole volume in a multi-frame file (:func:`read_volume`).
DICOM_FILE_SUFFIXES = (".dcm", ".ima", ".dicom")
#: How far a label map's value may lie from a whole number and still be read as that class: float noise of a label
#: map stored as float (``1.0000001``, ``0.9999998``) is rounded away; a value further off (``0.5``) is refused.
LABEL_TOLERANCE = 1e-3
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


def volume_stem(path: str | Path, suffixes: Sequence[str] = VOLUME_SUFFIXES + DICOM_FILE_SUFFIXES) -> str:
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
        return any(p.glob("*.dcm")) or bool(series_ids(p))
    return p.name.lower().endswith(VOLUME_SUFFIXES)


def one_component(components: int) -> None:
    """Refuse an image of several values per voxel (RGB, a vector field), in the same words for every format."""
    if components != 1:
        raise Refused(f"expected one value per voxel, got {components} components")


def real_voxels(dtype: np.dtype | str) -> None:
    """Refuse an image whose voxels are complex numbers (told by its header's data type, before its voxels are
    read), in the same words for every format: cast to float, their imaginary part would be dropped unsaid.

    Args:
        dtype: the data type the file stores (NumPy's, or its name: ``complex64``).

    Raises:
        Refused: a complex data type.
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        raise Refused(f"complex-valued voxels ({dtype.name}): a CT volume must hold real values")


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = load_nifti(path)
    one_component(len(img.get_data_dtype().names or ()) or 1)  # RGB(A) NIfTI: a structured dtype, one field each
    real_voxels(img.get_data_dtype())
    return np.asarray(img.dataobj, dtype=np.float32), np.asarray(img.affine, dtype=np.float64)


def _missing_data_file(path: Path) -> Path | None:
    """The data file a detached header (MetaImage ``.mhd``: ``ElementDataFile``; NRRD ``.nhdr``: ``data file``)
    names when it does not exist, else ``None`` (ITK would say the file is unreadable, and print to the console)."""
    data = detached_data_file(path)
    return None if data is None or data.exists() else data


def _read_sitk_file(path: Path):
    """One image file through SimpleITK: header first, then the voxel data, each failure one line."""
    import SimpleITK as sitk

    missing = _missing_data_file(path)
    if missing is not None:
        raise Refused(f"its header names the data file {missing}, which does not exist (copy it beside the header)")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise Refused("not a readable image file (its header cannot be read)") from e
    complex_types = {sitk.sitkComplexFloat32: "complex64", sitk.sitkComplexFloat64: "complex128"}  # an NRRD's
    real_voxels(complex_types.get(reader.GetPixelID(), np.float32))
    try:
        return reader.Execute()
    except RuntimeError as e:  # ITK's text ends "No such file or directory" for a file that exists
        raise Refused("the header reads but the voxel data do not: the file is truncated (incomplete) or "
                           "corrupt") from e


def _read_sitk(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    img = read_series(path) if path.is_dir() else _read_sitk_file(path)
    if not path.is_dir() and img.HasMetaDataKey("0008|0060"):  # a multi-frame DICOM file
        warn_if_modality_not_ct(img.GetMetaData("0008|0060"), path)
    one_component(img.GetNumberOfComponentsPerPixel())
    dim = img.GetDimension()
    arr = sitk.GetArrayViewFromImage(img).astype(np.float32).transpose(tuple(range(dim - 1, -1, -1)))
    if dim != 3 and not (dim == 4 and img.GetSize()[3] == 1):
        return arr, np.eye(4)  # rejected by the caller with the shape
    # a 3D image, or one of size (X, Y, Z, 1) (a multi-frame DICOM file read as a series, a MetaImage saved so),
    # whose frame is that of its first three axes
    return np.ascontiguousarray(arr), _sitk_affine(img)


def _sitk_affine(img) -> np.ndarray:
    """The RAS index -> world affine of a SimpleITK image or image file reader's first three axes."""
    dim = img.GetDimension()
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(dim, dim)[:3, :3]
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(img.GetSpacing(), dtype=np.float64)[:3]
    lps[:3, 3] = img.GetOrigin()[:3]
    return _LPS_TO_RAS @ lps


def volume_grid(path: str | os.PathLike) -> tuple[tuple[int, ...], np.ndarray]:
    """The voxel grid of a volume as :func:`read_volume` reads it: its shape ``(I, J, K)`` and RAS affine.

    Only the header is read for NIfTI, NRRD and MetaImage files of three axes; DICOM series and multi-frame files,
    other images and files whose header does not read are read whole by :func:`read_volume` (and its errors raised).

    Raises:
        FileNotFoundError, ValueError: as :func:`read_volume`.
    """
    import SimpleITK as sitk

    p = Path(path).expanduser()
    try:
        if p.is_file() and p.name.lower().endswith((".nii", ".nii.gz")):
            img = load_nifti(p)
            if len(img.shape) == 3 and img.get_data_dtype().kind in "biuf":  # others: refused by read_volume
                return tuple(int(n) for n in img.shape), np.asarray(img.affine, dtype=np.float64)
        elif p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES) and _missing_data_file(p) is None:
            info = sitk.ImageFileReader()
            info.SetFileName(str(p))
            info.ReadImageInformation()
            if info.GetDimension() == 3 and info.GetNumberOfComponents() == 1:
                return tuple(int(n) for n in info.GetSize()), _sitk_affine(info)
    except Exception:  # noqa: BLE001  (read_volume below names the problem in its words)
        pass
    vol = read_volume(p)
    return tuple(vol.array.shape), vol.affine


def is_multiframe_dicom(path: str | os.PathLike) -> bool:
    """Whether a DICOM file holds a whole volume (a multi-frame file, e.g. an Enhanced CT image: 3D with more than
    one frame), read as a file; one slice of a series is not."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return False
    return reader.GetDimension() == 3 and reader.GetSize()[2] > 1


def _three_axes(arr: np.ndarray, path: Path, planar: bool) -> np.ndarray:
    """``arr`` as read from ``path`` with trailing axes of one dropped (``(X, Y, Z, 1)`` -> ``(X, Y, Z)``) and, when
    ``planar``, a 2D image as one slice ``(I, J, 1)``; a ``ValueError`` naming the file when it is not 3D then."""
    while arr.ndim > 3 and arr.shape[-1] == 1:  # (X, Y, Z, 1): one channel or time point, a 3D volume
        arr = arr[..., 0]
    if planar and arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim > 3:
        raise ValueError(f"{path}: expected a single 3D volume, got an array of shape {arr.shape}: "
                         f"{int(np.prod(arr.shape[3:]))} volumes or channels beyond its three spatial axes (a time "
                         "series or a multi-channel image); give one 3D volume per file (a single trailing channel, "
                         "(X, Y, Z, 1), is read as the 3D volume)")  # fmt: skip
    if arr.ndim != 3:
        raise ValueError(f"{path}: expected a single 3D volume, got an array of shape {arr.shape} (2D images are not "
                         "supported)")  # fmt: skip
    return arr


def read_volume(
    path: str | os.PathLike, check_finite: bool = True, planar: bool = False, label: bool = False
) -> Volume:
    """Read a 3D volume (NIfTI, NRRD, MetaImage, a DICOM series folder or a multi-frame DICOM file) with its RAS
    affine.

    A trailing axis of one (a NIfTI ``(X, Y, Z, 1)``: one channel or time point, as some tools save a 3D volume) is
    dropped: the volume is ``(X, Y, Z)`` with the file's affine, so what is written from it (a segmentation, a
    zero-shot rendering) is 3D on the input's grid. More than one value along further axes (``(X, Y, Z, C)``,
    ``C > 1``: a time series or a multi-channel image) is refused, naming the file.

    Args:
        path: the file or DICOM folder.
        check_finite: reject NaN / infinite voxels.
        planar: read a 2D image (one detector image, a 2D MetaImage) as a volume of one slice ``(I, J, 1)``.
        label: the volume is a label map: its values are rounded to whole class numbers (:func:`whole_labels`:
            float noise within :data:`LABEL_TOLERANCE` is taken, other fractions are refused).

    Returns:
        The :class:`Volume` (array ``(I, J, K)`` float32, affine index -> RAS mm).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unreadable or corrupt file, not a single 3D volume (2D, or ``(X, Y, Z, C)`` with ``C > 1``), a DICOM folder without exactly one series
            or whose slices are not evenly spaced (a missing slice), several values per voxel (RGB), complex-valued
            voxels (:func:`real_voxels`), non-finite voxels, a singular affine, or
            (``label``) values that are no whole class numbers; the message names the file.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(missing_path_message(p, f"volume not found: {p}"))
    if p.is_file() and p.stat().st_size == 0:
        raise ValueError(f"{p}: the file is empty (0 bytes: a copy or download that did not finish?)")
    if not (p.is_dir() or p.name.lower().endswith(VOLUME_SUFFIXES)):
        if p.suffix.lower() in DICOM_FILE_SUFFIXES and not is_multiframe_dicom(p):
            raise ValueError(f"{p}: one DICOM slice, not a volume: give the folder holding its series ({p.parent})")
        if p.suffix.lower() not in DICOM_FILE_SUFFIXES:
            raise ValueError(f"{p}: not a volume file (readable: {', '.join(VOLUME_SUFFIXES)}, a DICOM folder or "
                             "a multi-frame DICOM file)")
    if p.is_dir() and p.name.lower().endswith(VOLUME_SUFFIXES) and not is_volume_path(p):
        raise ValueError(f"{p}: is a directory, not a volume file (a folder is read only as a DICOM series, and this "
                         "one holds none): give the volume file itself")  # fmt: skip
    try:
        arr, affine = _read_nifti(p) if p.is_file() and p.name.lower().endswith((".nii", ".nii.gz")) else _read_sitk(p)
    except Refused as e:
        raise ValueError(f"{p}: {e}") from e
    except Exception as e:  # nibabel / SimpleITK raise many types for corrupt or truncated files
        fork = " (its name is a macOS '._' resource file's, not an image's: remove it)" if p.name.startswith("._") else ""
        raise ValueError(f"{p}: cannot read the volume ({type(e).__name__}: {e}){fork}") from e
    arr = _three_axes(arr, p, planar)
    if check_finite and not np.isfinite(arr).all():
        raise ValueError(f"{p}: the volume contains NaN or infinite voxels")
    if label:
        arr = whole_labels(arr, p)
    check_affine(affine, p)
    return Volume(arr, affine, p)


def check_affine(affine: np.ndarray, path: str | os.PathLike) -> None:
    """Refuse a voxel-to-world matrix that places no voxel: one with NaN or infinite entries, or a singular one
    (a zero voxel size, a zeroed sform with qform code 0), the check of every reader of volumes and slices.

    Args:
        affine: the ``(4, 4)`` voxel-to-world matrix the file states.
        path: the file, as the error names it.

    Raises:
        ValueError: naming the file and showing the matrix.
    """
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError(f"{path}: the voxel-to-world matrix is singular or not finite:\n{affine}")


def whole_labels(array: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """A label map's values as whole class numbers: those within :data:`LABEL_TOLERANCE` of a whole number are
    rounded to it (float noise of a map stored as float, ``1.0000001``), which also keeps a later cast to an integer
    type (one-hot, Dice) from truncating ``0.9999999`` to class 0.

    Args:
        array: the label map, any shape (float).
        path: its file, as the error names it.

    Returns:
        The rounded map, same shape and dtype (``array`` itself when it holds whole numbers only).

    Raises:
        ValueError: values further than :data:`LABEL_TOLERANCE` from any whole number (``0.5``: an image or a
            probability map given as the label), naming the file, how many voxels and the first values.
    """
    rounded = np.round(array)
    off = np.abs(array - rounded) > LABEL_TOLERANCE
    if off.any():
        values = np.unique(array[off])
        shown = ", ".join(f"{v:.6g}" for v in values[:5]) + (" ..." if len(values) > 5 else "")
        n = int(off.sum())
        raise ValueError(f"{path}: a label map holds whole class numbers, but {plural(n, 'voxel')} of this one "
                         f"{'lies' if n == 1 else 'lie'} further than {LABEL_TOLERANCE:g} from any ({shown}): is it an image or a probability "
                         "map rather than a segmentation?")  # fmt: skip
    return array if np.array_equal(rounded, array) else rounded.astype(array.dtype, copy=False)


def __getattr__(name: str) -> Any:
    """``LoadVolumed``, made (MONAI and torch imported) when first asked for and then kept in this module.

    Args:
        name: the attribute asked for.

    Returns:
        The ``LoadVolumed`` class; any other name raises ``AttributeError``.
    """
    if name != "LoadVolumed":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()["LoadVolumed"] = made = _load_volumed_class()
    return made


def _load_volumed_class() -> type:
    """The ``LoadVolumed`` class, named ``medgmae.data.reader.LoadVolumed`` as when it was defined at import (the
    disk cache's folder name hashes that name, and pickles find it here)."""
    import torch
    from monai.config import KeysCollection
    from monai.data import MetaTensor
    from monai.transforms import MapTransform

    class LoadVolumed(MapTransform):
        """MONAI dictionary transform: replace path entries by channel-first MetaTensors ``(1, I, J, K)`` read with
        :func:`read_volume`, whose ``affine`` MONAI's spatial transforms (``Orientationd``, ``Spacingd``) then use.

        The meta data hold what MONAI's ``LoadImaged`` records (``filename_or_obj``, ``original_affine``, ``affine``,
        ``spatial_shape``, ``space``), so inversion (``Invertd``) and writers of results in the input's space work
        unchanged; unlike ``LoadImaged`` it reads MetaImage and DICOM series without the ``itk`` package.

        Args:
            keys: keys holding paths.
            allow_missing_keys: skip keys absent from the dict.
            label_keys: the keys among ``keys`` holding label maps, read with ``label=True`` (their values rounded
                to whole class numbers, :func:`whole_labels`).
        """

        def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False,
                     label_keys: KeysCollection = ()) -> None:  # fmt: skip
            super().__init__(keys, allow_missing_keys)
            self.label_keys = {label_keys} if isinstance(label_keys, str) else set(label_keys)

        def __call__(self, data: Mapping) -> dict:
            d = dict(data)
            for key in self.key_iterator(d):
                vol = read_volume(d[key], label=key in self.label_keys)
                meta = {"filename_or_obj": str(vol.path), "original_affine": vol.affine.copy(), "space": "RAS",
                        "spatial_shape": np.asarray(vol.array.shape)}  # fmt: skip
                d[key] = MetaTensor(torch.from_numpy(vol.array)[None], affine=torch.from_numpy(vol.affine), meta=meta)
            return d

    LoadVolumed.__qualname__ = "LoadVolumed"
    return LoadVolumed
