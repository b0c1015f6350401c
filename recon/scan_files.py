"""Scan files of the reconstruction: volumes in its ``(z, y, x)`` array order, NIfTI output, projection stacks."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from medgmae.files import atomic_write, save_nifti_atomic
from medgmae.missing_paths import missing_path_message

__all__ = ["load_volume", "save_nifti", "load_projections", "read_detector_images", "save_projections",
           "check_line_integrals", "line_integral_problem", "detector_stack_shape", "LINE_INTEGRAL_MAX", "itk_header", "ITK_HEADERS",
           "CENTRED_TOLERANCE"]

#: Line integrals beyond this do not occur in CT (a transmission of exp(-50)); larger values are raw counts or
#: intensities, or integrals in other length units than the geometry's millimetres.
LINE_INTEGRAL_MAX = 50.0
#: File endings whose header carries an ITK detector geometry (spacing, origin) that :func:`recon.stack_header.check_projection_header`
#: compares with ``geometry.json`` (the spacing) and reads the detector offset from (the origin).
ITK_HEADERS = (".mha", ".mhd", ".nrrd", ".nhdr")
#: Pixels within which a header's offset reads as centred and agrees with ``geometry.json``'s (the same tolerance).
CENTRED_TOLERANCE = 1e-3
#: What line integrals look like, as the messages about projections that do not say.
_LINE_INTEGRALS = "line integrals -log(I / I0) are mostly >= 0 and below about 10 for a body"
#: The range a normalised transmission I / I0 lies in (noise may take air a little above 1, a dark a little below 0).
_TRANSMISSION_RANGE = (-0.05, 1.5)
#: The median transmission of the outer detector columns (air) from which values in that range read as transmission.
_TRANSMISSION_AIR = 0.9
#: The first bytes of every ``.npy`` file (NumPy's format specification).
_NPY_MAGIC = b"\x93NUMPY"
#: Endings of multi-page TIFF stacks (projections, flats, darks; read with tifffile: a TIFF holds no world geometry,
#: so none is a volume of the datasets).
TIFF_SUFFIXES = (".tif", ".tiff")


def load_volume(path, check_finite: bool = True, planar: bool = False) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Read a 3D volume (NIfTI, NRRD, MetaImage or a DICOM series, through the toolkit's one reader
    :func:`medgmae.data.reader.read_volume`) as float32 ``(z, y, x)``: the reader's ``(i, j, k)`` order transposed.

    Args:
        path: the file or DICOM folder.
        check_finite: refuse NaN / infinite voxels (the projection reader checks them itself, naming the view).
        planar: read a 2D image as a volume of one slice (a flat or dark image, :mod:`recon.flat_field`).

    Returns:
        ``(volume (D, H, W), affine (4, 4) of the (i, j, k) = (x, y, z) order, voxel_size (sz, sy, sx))``.

    Raises:
        ValueError: missing, unreadable, not 3D or non-finite; the message names the file.
    """
    from medgmae.data.reader import read_volume

    try:
        vol = read_volume(path, check_finite=check_finite, planar=planar)
    except FileNotFoundError as e:
        raise ValueError(missing_path_message(path, f"volume file {path} does not exist")) from e
    return np.ascontiguousarray(vol.array.transpose(2, 1, 0)), vol.affine, vol.spacing[::-1]


def save_nifti(path, volume: np.ndarray, affine: np.ndarray) -> None:
    """Write a ``(z, y, x)`` volume as NIfTI (array order ``(x, y, z)``, ``affine`` for that order) atomically."""
    save_nifti_atomic(np.asarray(volume).transpose(2, 1, 0), affine, path, np.float32)


def load_projections(path) -> np.ndarray:
    """Read a projection stack ``(views, rows, cols)`` of line integrals as float32.

    ``.npy`` files hold that array as it is. A MetaImage (``.mha`` / ``.mhd``, RTK's format for projection stacks),
    NRRD or NIfTI stack is read through the toolkit's one reader (:func:`load_volume`), a multi-page TIFF
    (``.tif`` / ``.tiff``) with ``tifffile.imread``. Other than TIFF, its last index runs over the views, its second
    over the detector rows and its first over the columns (ITK's ``(x, y, z)`` = (column, row, view), the array ``(views, rows, cols)`` SimpleITK gives; a
    TIFF's pages are the views, each page's rows and columns the detector's, as ``tifffile.imread`` gives them);
    ``geometry.json`` holds the geometry, and :func:`recon.stack_header.check_projection_header` refuses a MetaImage / NRRD header
    that states another pitch and reads the detector offset its origin states (a TIFF's is not read: its
    resolution tags are no detector pitch). Values that cannot be
    line integrals (mostly negative, raw counts, a normalised transmission: :func:`line_integral_problem`) are refused, implausibly large ones warned about; raw
    detector images are converted first (:mod:`recon.flat_field`, ``--flat`` / ``--dark`` / ``--i0``).

    Raises:
        ValueError: missing, a folder, unreadable (truncated), not 3D, non-finite or not line integrals; the message
            names the file.
    """
    p, integers = read_detector_images(path)
    check_line_integrals(p, f"projections {path}", integers)
    return p.astype(np.float32, copy=False)


def read_detector_images(path, what: str = "projections", planar: bool = False) -> tuple[np.ndarray, bool]:
    """Read a stack of detector images ``(images, rows, cols)`` as stored, in the layouts of
    :func:`load_projections` (projection stacks, and the flat and dark images of :mod:`recon.flat_field`).

    Args:
        path: the file.
        what: the file's role, as messages name it (``"projections"``, ``"--flat"``, ``"--dark"``).
        planar: also read one 2D image (a ``(rows, cols)`` ``.npy``, a single-page TIFF, a 2D MetaImage) as a
            stack of one.

    Returns:
        ``(images (n, rows, cols), whether the file stores integers)``: a ``.npy`` or TIFF file's array in its own
        dtype (a TIFF read with ``tifffile.imread``, whose pages are the images; any planar TIFF page, such as the
        one page ``tifffile.imwrite`` makes of a ``(3, rows, cols)`` stack, included), another image file's as
        float32.

    Raises:
        ValueError: missing, a folder, unreadable (truncated), of another dimension or non-finite; the message names
            ``what`` and the file (NaN / Inf: how many, in how many images, and the first's image, row and column).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(_folder_problem(path, what))
    if not path.is_file():
        raise ValueError(missing_path_message(path, f"{what} file {path} does not exist"))
    if path.name.lower().endswith(TIFF_SUFFIXES):
        p = _read_tiff(path, what, planar)
        integers = p.dtype.kind in "iu"
    elif path.suffix.lower() != ".npy":
        p = load_volume(path, check_finite=False, planar=planar)[0]
        integers = _stored_as_integers(path)
    else:
        p = _load_npy(path, what)
        if planar and p.ndim == 2:
            p = p[None]
        if p.ndim != 3:
            shape = "(images, rows, cols) or (rows, cols)" if planar else "(views, rows, cols)"
            raise ValueError(f"{what} {path} must be {shape}, got shape {p.shape}")
        integers = np.issubdtype(p.dtype, np.integer)
    bad = ~np.isfinite(p)
    if bad.any():
        view, row, col = (int(i) for i in np.argwhere(bad)[0])
        unit = "view" if what == "projections" else "image"
        verb = "contain" if what == "projections" else "contains"  # projections ... contain; --flat F contains
        raise ValueError(f"{what} {path} {verb} {int(bad.sum())} NaN or Inf value{'s' if bad.sum() > 1 else ''} in "
                         f"{int(bad.any(axis=(1, 2)).sum())} of {p.shape[0]} {unit}s (the first: {unit} {view}, row {row}, "
                         f"column {col})")  # fmt: skip
    return p, bool(integers)


def _folder_problem(path: Path, what: str) -> str:
    """Why the folder ``path`` is not read: a stack is one file; a folder of one TIFF per image (as micro-CT
    scanners export projections) is named with its first and last file and the line that stacks them."""
    tiffs = sorted(p.name for p in path.iterdir() if p.is_file() and p.name.lower().endswith(TIFF_SUFFIXES))
    head = f"{what} {path} is a folder, not a file: give the stack's file (.npy, .mha, .mhd, .nrrd, .nii, .nii.gz, .tif or .tiff)"
    if len(tiffs) < 2:
        return head
    by_number = sorted(tiffs, key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)])
    first = next((i for i, (a, b) in enumerate(zip(tiffs, by_number)) if a != b), None)  # where the orders part
    order = ("once their names sort in that order (numbers zero-padded: 0009 before 0010)" if first is None else
             f"once their names sort in that order: they do not ({tiffs[first]} sorts before {by_number[first]}); "
             "zero-pad their numbers first")  # fmt: skip
    return (f"{head}; it holds {len(tiffs)} TIFF files ({by_number[0]} ... {by_number[-1]}): write them into one "
            f"multi-page TIFF, a page per image in order, with tifffile.imwrite('stack.tif', numpy.stack([tifffile.imread(f) "
            f"for f in sorted(glob.glob(glob.escape({str(path)!r}) + '/*')) if f.lower().endswith(('.tif', '.tiff'))]), "
            "photometric='minisblack'), "
            f"{order}")  # fmt: skip


def _read_tiff(path: Path, what: str, planar: bool) -> np.ndarray:
    """A TIFF stack ``(images, rows, cols)`` as ``tifffile.imread`` gives it (one page of 2D: a stack of one where
    ``planar``). tifffile rather than SimpleITK: ITK reads grey pages only, and ``tifffile.imwrite`` stores a
    ``(3, rows, cols)`` array as one planar page of three samples, which tifffile reads back as three images."""
    import tifffile

    try:
        p = np.asarray(tifffile.imread(path))
    except Exception as e:
        raise ValueError(f"cannot read {what} {path} (a TIFF stack): {type(e).__name__}: {e}") from e
    while p.ndim > 3 and p.shape[-1] == 1:
        p = p[..., 0]
    if planar and p.ndim == 2:
        p = p[None]
    if p.ndim != 3 or p.dtype.kind not in "biuf":
        shape = "(images, rows, cols) or (rows, cols)" if planar else "(views, rows, cols)"
        raise ValueError(f"{what} {path} must be a TIFF stack of {shape} grey images, got shape {p.shape} of {p.dtype}: "
                         "write it with tifffile.imwrite(path, stack, photometric='minisblack')")  # fmt: skip
    return p


def _load_npy(path: Path, what: str) -> np.ndarray:
    """A ``.npy`` file's array of real numbers: refused, naming ``what`` and the file, when it does not start with
    NumPy's magic bytes (another format under a ``.npy`` name), its header states Python objects (never unpickled)
    or other values than real numbers, or it cannot be read (truncated)."""
    _npy_header(path, what)
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:
        raise ValueError(f"cannot read {what} {path}: {e}") from e


def _npy_header(path: Path, what: str) -> tuple[tuple[int, ...], np.dtype]:
    """A ``.npy`` file's ``(shape, dtype)`` from its header, with :func:`_load_npy`'s refusals."""
    with open(path, "rb") as f:
        if f.read(len(_NPY_MAGIC)) != _NPY_MAGIC:
            raise ValueError(f"{what} {path} is not a NumPy .npy file (it does not start with NumPy's magic bytes "
                             "\\x93NUMPY): save the stack with numpy.save, or give a .mha, .mhd, .nrrd, .nii, .nii.gz "
                             "or .tif stack")  # fmt: skip
        try:
            f.seek(0)
            version = np.lib.format.read_magic(f)
            fmt = np.lib.format  # version 3.0 differs from 2.0 only by a UTF-8 header (field names)
            shape, _, dtype = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(f)
            size, expected = path.stat().st_size, f.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        except Exception as e:
            raise ValueError(f"cannot read {what} {path}: {e}") from e
    if dtype.hasobject:
        raise ValueError(f"{what} {path} holds Python objects, not numbers: save the stack as a float array "
                         "(numpy.save(path, numpy.asarray(stack, numpy.float32)))")  # fmt: skip
    if dtype.kind not in "biuf":
        raise ValueError(f"{what} {path} holds {dtype} values, not real numbers: save the stack as a float array")
    if size < expected:
        raise ValueError(f"cannot read {what} {path}: the file is truncated ({size} bytes, its header's {tuple(shape)} "
                         f"array of {dtype} needs {expected})")  # fmt: skip
    return tuple(shape), dtype


def detector_stack_shape(path, what: str = "projections") -> tuple[int, int, int]:
    """The shape ``(images, rows, cols)`` that :func:`read_detector_images` gives a stack, from its header alone for a
    3D ``.npy``, TIFF (its first series, as ``tifffile.imread`` reads it) or NIfTI stack, so that a stack of tens of
    gigabytes is not loaded to learn its shape (MetaImage / NRRD headers: :func:`itk_header`). Other files, and any
    whose header does not give three axes, are read whole (:func:`read_detector_images` raises their problem). A
    shape from a header says nothing of the values: NaN / Inf, or a TIFF's dtype, are refused when the stack is read.

    Raises:
        ValueError: as :func:`read_detector_images`, naming ``what`` and the file.
    """
    path = Path(path)
    name, shape = path.name.lower(), None
    if path.is_file() and name.endswith(".npy"):
        shape = _npy_header(path, what)[0]
    elif path.is_file() and name.endswith(TIFF_SUFFIXES):
        shape = _tiff_shape(path)
    elif path.is_file() and name.endswith((".nii", ".nii.gz")):
        from medgmae.data.reader import load_nifti

        try:
            shape = tuple(reversed(load_nifti(path).shape))  # the reader's (i, j, k) = (column, row, image)
        except Exception:  # noqa: BLE001  (the whole read below names the problem in its words)
            shape = None
    if shape is not None and len(shape) == 3:
        return tuple(int(n) for n in shape)
    return tuple(int(n) for n in read_detector_images(path, what)[0].shape)


def _tiff_shape(path: Path) -> tuple[int, ...] | None:
    """The shape of a TIFF's first series with trailing axes of one dropped (:func:`_read_tiff`'s), from its page
    headers; ``None`` when they do not read."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            shape = tuple(tif.series[0].shape)
    except Exception:  # noqa: BLE001  (the whole read names the problem)
        return None
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _stored_as_integers(path: Path) -> bool:
    """Whether a MetaImage / NRRD / NIfTI stack stores integers (the reader hands back float32), so that raw counts
    are refused there as in ``.npy``; a NIfTI with a scale factor stores scaled values, not integers. A DICOM stack
    is not told (its counts are only warned about, by their size)."""
    name = path.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            img = nib.load(str(path))
            slope, inter = img.header.get_slope_inter()
            return img.get_data_dtype().kind in "iu" and slope in (None, 1.0) and inter in (None, 0.0)
        if name.endswith(ITK_HEADERS):
            import SimpleITK as sitk

            return "integer" in sitk.GetPixelIDValueAsString(itk_header(path).GetPixelID())
    except Exception:  # the reader already read the file; a header it cannot tell counts as not integers
        return False
    return False


def itk_header(path: Path):
    """A SimpleITK reader holding a MetaImage / NRRD file's header (no voxels read)."""
    import SimpleITK as sitk

    info = sitk.ImageFileReader()
    info.SetFileName(str(path))
    info.ReadImageInformation()
    return info


def line_integral_problem(p: np.ndarray, integers: bool = False) -> tuple[str, str] | None:
    """What makes ``p`` not line integrals ``-log(I / I0)`` (mostly >= 0, below :data:`LINE_INTEGRAL_MAX`), the one
    check of every projection stack the toolkit reads or simulates.

    Args:
        p: the projections, any shape.
        integers: whether the file stores integers (raw detector counts are refused then).

    Returns:
        ``None`` when they can be line integrals, else ``(problem, cause)``: what is wrong (completing a sentence
        whose subject names the projections) and its likely cause in a file (negated values, raw counts, float
        readings all above :data:`LINE_INTEGRAL_MAX` where air would read near 0, a normalised transmission:
        :func:`_looks_like_transmission`).
    """
    what = _LINE_INTEGRALS
    if p.size and p.max() <= 0:
        return (f"have no positive value ({float((p < 0).mean()):.0%} negative, the rest 0; max {float(p.max()) + 0.0:.4g}): "
                f"{what}", "were they negated?")  # fmt: skip
    if p.size and float((p < -0.05).mean()) > 0.5:
        return (f"are mostly negative ({float((p < -0.05).mean()):.0%} of the values below -0.05): {what}",
                "were they negated?")  # fmt: skip
    if p.size and integers and p.max() > 100:
        return (f"hold integers up to {int(p.max())}, raw detector counts or intensities rather than line integrals: "
                f"{what}", "give the open-beam image as --flat (and the dark image as --dark) or the open-beam "
                "intensity as --i0 to convert them with -log((I - D) / (F - D)), or convert with -log(I / I0) first")  # fmt: skip
    if p.size and float(p.min()) > LINE_INTEGRAL_MAX:
        return (f"are all above {LINE_INTEGRAL_MAX:g} ({float(p.min()):.4g} .. {float(p.max()):.4g}), raw detector readings "
                f"rather than line integrals: every scan has rays through air or past the object, whose line integrals "
                f"are near 0; {what}", "give the open-beam image as --flat (and the dark image as --dark) or the "
                "open-beam intensity as --i0 to convert them with -log((I - D) / (F - D))")  # fmt: skip
    if p.size and p.ndim >= 2 and _looks_like_transmission(p):
        return (f"lie within [0, 1] with their largest values in the outer detector columns (median "
                f"{float(np.median(np.stack([p[..., 0], p[..., -1]]))):.3g}), where a scan's air is: {what}, near 0 "
                "in air", "these look like transmission I / I0 in [0, 1]: give --i0 1 to convert them with -log(I / I0)")  # fmt: skip
    return None


def _looks_like_transmission(p: np.ndarray) -> bool:
    """Whether ``p`` is a normalised transmission ``I / I0`` rather than line integrals: all values within
    [:data:`_TRANSMISSION_RANGE`], the outer detector columns (a scan's air) at a median of at least
    :data:`_TRANSMISSION_AIR` and the middle third of the columns (the object) lower on average. Line integrals are
    the mirror: near 0 in air and largest through the object's middle, so a small object whose integrals stay below
    1, or a wide one whose rays all cross it (no air columns), keeps its middle above its edges and passes."""
    low, high = _TRANSMISSION_RANGE
    if float(p.min()) < low or float(p.max()) > high:
        return False
    cols = p.shape[-1]
    edge = float(np.median(np.stack([p[..., 0], p[..., -1]])))
    middle = float(p[..., cols // 3 : cols - cols // 3].mean())
    return edge >= _TRANSMISSION_AIR and middle < 0.99 * edge


def check_line_integrals(p: np.ndarray, name: str, integers: bool, cause: str | None = None) -> None:
    """Refuse values that cannot be line integrals (:func:`line_integral_problem`); warn about floats above
    :data:`LINE_INTEGRAL_MAX`.

    Args:
        p: the projections, any shape.
        name: what they are, as the messages name them (``"projections FILE"``).
        integers: whether the file stores integers (raw counts are refused then).
        cause: the likely cause to name instead of :func:`line_integral_problem`'s (projections converted from
            raw images: the flat or dark image).

    Raises:
        ValueError: ``name``, what is wrong and its likely cause.
    """
    problem = line_integral_problem(p, integers)
    if problem:
        raise ValueError(f"{name} {problem[0]}; {cause or problem[1]}")
    if p.size and p.max() > LINE_INTEGRAL_MAX:
        print(f"warning: {name} reach {float(p.max()):.4g}: {_LINE_INTEGRALS}, so these look like intensities "
              "(raw readings: give --flat or --i0, and --dark, to convert them) or integrals in other length units than "
              "the geometry's mm; the reconstruction will be scaled alike",
              flush=True)  # fmt: skip


def save_projections(path, proj: np.ndarray) -> None:
    """Write a ``(views, rows, cols)`` stack of line integrals as float32 ``.npy``, atomically."""
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(proj, dtype=np.float32))
