"""Volumes written in the tests of the data readers: NIfTI, SimpleITK images and DICOM series of known geometry."""

from __future__ import annotations

import locale
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

SHAPE = (20, 16, 12)  # (x, y, z) index order
SPACING = (0.8, 1.3, 2.5)
ORIGIN = (-12.0, 30.5, 7.25)


def rotation(seed: int) -> np.ndarray:
    """A proper rotation (det +1), far from the identity and from axis flips."""
    a, b, c = np.random.default_rng(seed).uniform(0.3, 1.2, 3)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def sitk_image(seed: int = 0, label: bool = False) -> sitk.Image:
    rng = np.random.default_rng(seed)
    zyx = SHAPE[::-1]
    arr = rng.integers(0, 3, zyx).astype(np.uint8) if label else rng.integers(-1000, 1500, zyx).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    img.SetDirection(rotation(seed).flatten().tolist())
    return img


def write_dicom_series(img: sitk.Image, folder: Path, series: int = 2, description: str = "", decimals: int = 10) -> Path:
    """One CT slice per file, geometry in the patient position / orientation tags (SimpleITK's DICOM example);
    ``decimals``: those of the position tags (scanners often write two)."""
    folder.mkdir(parents=True, exist_ok=True)
    d = np.asarray(img.GetDirection()).reshape(3, 3)
    orientation = "\\".join(f"{v:.10f}" for v in (*d[:, 0], *d[:, 1]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    saved_locale = locale.setlocale(locale.LC_ALL)  # GDCM's writer sets the process locale to "C"
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        for tag, value in (("0008|0060", "CT"), ("0020|000d", "1.2.826.0.1.3680043.2.1125.1"),
                           ("0020|000e", f"1.2.826.0.1.3680043.2.1125.{series}"), ("0020|0037", orientation),
                           ("0008|103e", description),
                           ("0018|0050", str(img.GetSpacing()[2])), ("0020|0013", str(k)),
                           ("0008|0018", f"1.2.826.0.1.3680043.2.1125.3.{series}.{k}"),
                           ("0020|0032", "\\".join(f"{v:.{decimals}f}" for v in img.TransformIndexToPhysicalPoint((0, 0, k))))):  # fmt: skip
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"series{series}_slice_{k:03d}.dcm"))
        writer.Execute(sl)
    locale.setlocale(locale.LC_ALL, saved_locale)
    return folder


def pydicom_dataset(sop_class: str, sop_instance: bool = True):
    """A pydicom ``Dataset`` of SOP class ``sop_class`` with its file meta (explicit VR little endian, a new
    instance UID), to which a test adds its pixel module; ``sop_instance=False`` leaves the SOP class and instance
    out of the data set itself (a DICOMDIR holds them in its file meta only)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    if sop_instance:
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    return ds


def nifti_file(path: Path, array: np.ndarray, affine=None) -> str:
    """``array`` saved as NIfTI at ``path`` (folders made; default affine 1.5 x 1.5 x 2 mm, no rotation)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([1.5, 1.5, 2.0, 1.0]) if affine is None else affine), str(path))
    return str(path)


def truncate_file(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def read_only_folder(monkeypatch, folder: Path) -> None:
    """Make creating a file in ``folder`` fail as on a read-only mount (``tempfile.mkstemp`` there raises EROFS): the
    tests run as root, who ignores permission bits, so a ``chmod`` would not do."""
    import errno
    import tempfile

    real = tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if Path(dir) == Path(folder):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)


def varied_volume(shape: tuple, value: float) -> np.ndarray:
    """A float32 volume of ``shape`` around ``value`` that is not constant (the pre-check refuses a blank one)."""
    return (value + np.arange(int(np.prod(shape))) % 5).reshape(shape).astype(np.float32)


def decathlon_case(folder: Path, name: str, value: int, channel: bool = True, label: bool = True, shape=(12, 10, 8),
                   split: str = "Tr") -> None:
    """An image whose largest intensity encodes its case (``value * 100``; one voxel lower, as the pre-check refuses a
    blank image) and a label map of classes 0..value, in ``images<split>/`` and ``labels<split>/``."""
    affine = np.diag([0.8, 0.9, 2.5, 1.0])
    (folder / f"images{split}").mkdir(parents=True, exist_ok=True)
    (folder / f"labels{split}").mkdir(parents=True, exist_ok=True)
    image = np.full(shape, value * 100.0, np.float32)
    image[0, 0, 0] -= 1.0
    nib.save(nib.Nifti1Image(image, affine), folder / f"images{split}" / f"{name}{'_0000' if channel else ''}.nii.gz")
    if label:
        lab = np.zeros(shape, np.uint8)
        for c in range(1, value + 1):
            lab[c, :, :] = c
        nib.save(nib.Nifti1Image(lab, affine), folder / f"labels{split}" / f"{name}.nii.gz")
