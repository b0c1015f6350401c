"""DICOM series: finding the one series of a folder and the checks its slices must pass before ITK's stacking of
them is trusted (:func:`read_series`, used by :func:`medgmae.data.reader.read_volume`).

ITK stacks a series' slices along the normal at their average step, whatever their positions: a missing or repeated
slice, slices of another orientation or size filed under the series' UID (a localizer), or slices shifted within
their planes (a gantry tilt) would be read without error with every slice but the first misplaced. Each is refused
here, naming the files; a series of another modality than CT is warned about.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

__all__ = ["Refused", "read_series", "series_files", "series_ids", "warn_if_modality_not_ct"]

logger = logging.getLogger(__name__)


def series_ids(folder: Path) -> tuple[str, ...]:
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


class Refused(ValueError):
    """A file or DICOM folder the reader refuses by its own checks (its message needs no exception type)."""


def series_files(folder: Path) -> tuple[str, ...]:
    """The slice files of the one DICOM series in ``folder``, sorted by GDCM along the slice normal.

    Raises:
        ValueError: no series, or several (a scout, a second reconstruction kernel, a contrast phase: reading one of
            them silently would train on or infer from the wrong images); the message lists each with its slice count
            and description.
    """
    import SimpleITK as sitk

    ids = series_ids(folder)
    if not ids:
        names = [f.name.lower() for f in folder.iterdir() if f.is_file()]
        files = len(names)
        what = f"none of its {files} files is" if files > 1 else "its one file is not" if files else "it holds no files"
        volumes = sum(n.endswith((".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")) for n in names)
        hint = (f"; it holds {volumes} volume file{'s' if volumes > 1 else ''}: give "
                f"{'them as files' if volumes > 1 else 'it as a file'} (where patterns are taken, e.g. 'folder/*.nii.gz')") if volumes else ""  # fmt: skip
        raise Refused(f"no DICOM series found in the folder ({what}{' a DICOM slice' if files else ''}){hint}")
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
    raise Refused(
        f"the folder holds {len(ids)} DICOM series; put each in its own folder and give that one: " + "; ".join(found)
    )


def _slice_geometry(reader) -> tuple[np.ndarray, np.ndarray] | None:
    """Each slice's ImagePositionPatient ``(n, 3)`` and the slice normal (the cross product of the first slice's
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
    return ipp, np.cross(iop[:3], iop[3:])


def _check_not_sheared(geometry: tuple[np.ndarray, np.ndarray] | None) -> None:
    """Refuse a series whose slices shift within their planes from one to the next (a gantry-tilted acquisition):
    ITK stacks them along the normal as if they did not, which misplaces every slice but the first (by the tilt's
    tangent times the distance along the normal). The tolerances, 1 % of a step (at least 0.02 mm) from one slice to
    the next and 0.2 % of the series' length from the first to the last, allow for DICOM's rounding of the position
    and orientation tags.

    Args:
        geometry: the series' :func:`_slice_geometry` (``None``: nothing to check against).

    Raises:
        ValueError: naming the shift per slice, the angle and how to resample the series.
    """
    if geometry is None or len(geometry[0]) < 2:
        return
    ipp, normal = geometry
    steps = np.diff(ipp, axis=0)
    along = steps @ normal
    across = np.linalg.norm(steps - along[:, None] * normal, axis=1)
    worst = int(np.argmax(across))
    # a small tilt of thin slices stays under the tolerance of one step and adds up over the series: first to last,
    # an in-plane shift over 0.2 % of the length (0.1 degree; a 3-decimal orientation tag errs by ~0.06 degree)
    total = ipp[-1] - ipp[0]
    total_along = float(total @ normal)
    total_across = float(np.linalg.norm(total - total_along * normal))
    step_ok = across[worst] <= max(0.01 * abs(along[worst]), 0.02)
    if step_ok and total_across <= max(0.002 * abs(total_along), 0.02):
        return
    per_step = across[worst] if not step_ok else total_across / max(1, len(steps))
    step_along = abs(along[worst]) if not step_ok else abs(total_along) / max(1, len(steps))
    angle = np.degrees(np.arctan2(per_step, step_along))
    raise Refused(f"each slice of the DICOM series is shifted by {per_step:.3g} mm within its plane from the "
                   f"one before (a {angle:.1f} degree gantry tilt?): the volume is sheared, and it would be read as if it "
                   "were not, every slice misplaced; resample it to a regular grid first (dcm2niix corrects gantry "
                   "tilt)")  # fmt: skip


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
                raise Refused(f"slice {name} has {what} {shown(value)} but the series' other slices {shown(ref)} (a "
                               "localizer or another image filed under the same series? move it out of the folder)")  # fmt: skip


def _warn_if_not_ct(reader, folder: Path) -> None:
    """Warn when a series' Modality is not CT (:func:`warn_if_modality_not_ct`)."""
    if reader.HasMetaDataKey(0, "0008|0060"):
        warn_if_modality_not_ct(reader.GetMetaData(0, "0008|0060"), folder, "series")


def warn_if_modality_not_ct(modality: str, where: Path, what: str = "file") -> None:
    """Warn when a DICOM series' or multi-frame file's Modality is not CT: the toolkit reads values as HU (an MR
    image reads without error and trains or reconstructs as nonsense)."""
    modality = modality.strip()
    if modality and modality.upper() != "CT":
        logger.warning("%s: a DICOM %s of modality %s, read as CT in HU (the toolkit expects CT)", where, what, modality)


def _shared_position(names: list[str], pos: np.ndarray) -> str | None:
    """The first two slices at one position along the normal (a repeated slice: GDCM then orders the series by file
    name, so the two need not be neighbours), worded ``"dup.dcm and 0005.dcm share position 12.5 mm"`` with the
    later file in the series first, and how many more such pairs; ``None`` when every slice has its own position.
    Positions within 1 % of the median gap between sorted positions (at least 0.02 mm) are one."""
    order = np.argsort(pos, kind="stable")
    gaps = np.diff(pos[order])
    tol = max(0.01 * float(np.median(gaps)), 0.02)
    same = np.flatnonzero(np.abs(gaps) <= tol)
    if not same.size:
        return None
    i, j = sorted((int(order[same[0]]), int(order[same[0] + 1])))
    more = f" ({same.size - 1} more pair{'s' if same.size > 2 else ''} of slices share a position)" if same.size > 1 else ""
    return f"{names[j]} and {names[i]} share position {pos[i]:.4g} mm (a repeated slice?){more}"


def _check_even_slices(reader, geometry: tuple[np.ndarray, np.ndarray] | None, folder: Path | None = None) -> None:
    """Refuse a series whose slices are not evenly spaced along the normal (a missing or repeated slice).

    ITK reads such a series as evenly spaced at the average step (only a warning on stderr), which puts every slice
    but the ends at the wrong world position. The tolerance, 1 % of the spacing but at least 0.02 mm, allows for
    DICOM's rounding of the position tags.

    Args:
        reader: the series' slice headers (their file names).
        geometry: the series' :func:`_slice_geometry` (``None``: nothing to check against).
        folder: the series' folder: its files that are not in the series (GDCM leaves out a file it cannot read,
            e.g. a truncated slice) are named after an uneven step as a likely cause of the gap (``None``: not).

    Raises:
        ValueError: naming two slices that share a position (a repeated slice), or the slice count and, when most
            steps agree, that usual step (the median) and the
            largest deviating step with the files and positions on either side; when no step is shared by most
            (e.g. 3 slices, one gap), the smallest and the largest step, each with its files and positions.
    """
    if geometry is None or len(geometry[0]) < 3:
        return
    pos = geometry[0] @ geometry[1]  # each slice's position along the normal, mm
    steps = np.diff(pos)
    expected = float(np.median(steps))
    usual = np.abs(steps - expected) <= max(0.01 * abs(expected), 0.02)
    if usual.all():
        return
    names = [Path(f).name for f in reader.GetFileNames()]
    shared = _shared_position(names, pos)
    if shared is not None:
        raise Refused(f"two slices of the DICOM series {shared}: remove one of them from the folder")

    def step(i: int) -> str:
        return f"{names[i]} (position {pos[i]:.4g} mm) to {names[i + 1]} ({pos[i + 1]:.4g} mm)"

    head = (f"the {len(pos)} slices of the DICOM series are not evenly spaced along the slice normal (a missing or "
            "repeated slice?): ")  # fmt: skip
    listed = set(names)  # the folder is listed only for a refusal
    strays = sorted(f.name for f in folder.iterdir() if f.is_file() and f.name not in listed) if folder else []
    tail = ""
    if strays:
        shown = ", ".join(strays[:3]) + (f" and {len(strays) - 3} more" if len(strays) > 3 else "")
        tail = (f"; {shown} in the folder {'is' if len(strays) == 1 else 'are'} not part of the series: truncated or "
                "not DICOM?")  # fmt: skip
    if usual.sum() * 2 > len(steps):
        worst = int(np.argmax(np.abs(steps - expected)))
        raise Refused(head + f"the usual step is {abs(expected):.4g} mm, but {step(worst)} is "
                      f"{abs(steps[worst]):.4g} mm{tail}")  # fmt: skip
    small, large = int(np.argmin(np.abs(steps))), int(np.argmax(np.abs(steps)))
    raise Refused(
        head + f"no step is shared by most slices: the smallest, {step(small)}, is {abs(steps[small]):.4g} mm and "
        f"the largest, {step(large)}, is {abs(steps[large]):.4g} mm{tail}"
    )


class _SliceHeaders:
    """The DICOM tags of each slice of a series, read from the slice headers only (no pixel data), with the
    per-slice accessors of SimpleITK's ``ImageSeriesReader`` (``GetFileNames``, ``HasMetaDataKey``,
    ``GetMetaData``) that the checks above use, so that they run before ITK stacks the slices (whose failure on a
    slice of another size names no file).

    Raises:
        Refused: a slice whose header cannot be read, naming it.
    """

    def __init__(self, files: tuple[str, ...]) -> None:
        import SimpleITK as sitk

        self.files = tuple(files)
        self.tags: list[dict[str, str]] = []
        for f in self.files:
            info = sitk.ImageFileReader()
            info.SetFileName(f)
            try:
                info.ReadImageInformation()
            except RuntimeError as e:
                raise Refused(f"slice {Path(f).name} cannot be read (truncated or not DICOM?)") from e
            self.tags.append({k: info.GetMetaData(k) for k in info.GetMetaDataKeys()})

    def GetFileNames(self) -> tuple[str, ...]:  # noqa: N802  (SimpleITK's name)
        """The slice files, in the series' order."""
        return self.files

    def HasMetaDataKey(self, i: int, key: str) -> bool:  # noqa: N802
        """Whether slice ``i`` holds tag ``key`` (``"gggg|eeee"``)."""
        return key in self.tags[i]

    def GetMetaData(self, i: int, key: str) -> str:  # noqa: N802
        """The value of tag ``key`` of slice ``i``."""
        return self.tags[i][key]


def read_series(folder: Path):
    """The one DICOM series of ``folder`` as a SimpleITK image; its slices' headers pass the checks above before
    ITK reads the pixel data.

    Raises:
        Refused: no series or several, a slice whose header does not read, slices that differ, are shifted within
            their planes or unevenly spaced.
    """
    import SimpleITK as sitk

    files = series_files(folder)
    headers = _SliceHeaders(files)
    _check_slices_agree(headers)
    geometry = _slice_geometry(headers)  # every slice's position tags parsed once, for both checks
    _check_not_sheared(geometry)
    _check_even_slices(headers, geometry, folder)
    _warn_if_not_ct(headers, folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    warn = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK's uneven-slices warning: refused above, clearly
    try:
        return reader.Execute()
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warn)
