"""File I/O shared by the whole toolkit: the check of an output folder before any work, atomic output (every file
appears whole or not at all; a folder of outputs is staged and moved in only when all were written), the one NIfTI
writer (the one safe ``torch.load`` and atomic ``torch.save``: :mod:`medgmae.torch_files`). Light on purpose: no ignite or
MONAI imports."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from medgmae.missing_paths import missing_path_message
from medgmae.temp_names import remove_interrupted_writes, staging_prefix, temp_name
from medgmae.write_failures import OutputWriteError, moved_failure, write_failure
from medgmae.words import plural

__all__ = [
    "absolute_path",
    "bundle_config",
    "skipped_files_note",
    "atomic_write",
    "staged_outputs",
    "save_json_atomic",
    "read_json",
    "save_nifti_atomic",
    "output_dir_problem",
    "path_length_problem",
    "too_long_message",
    "os_error_message",
    "remove_interrupted_writes",
    "given_more_than_once",
]


def output_dir_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be (or become) a writable folder, ``None`` when it can; leaves nothing behind (a file is
    created and removed at once in the nearest existing folder, as permission bits do not tell)."""
    p = Path(path).expanduser()
    if str(path).strip() == "":
        return "the path is empty"
    if long := path_length_problem(p):
        return long
    try:
        return _folder_problem(p)
    except OSError as e:  # a folder above that cannot be searched...: the system's words
        return f"cannot use the path ({e.strerror or e})"


def path_length_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be created for its length, ``None`` when it can: a name in it longer than the file system
    of its nearest existing folder takes (``NAME_MAX``, 255 bytes on the usual ones), or the whole path longer than the
    system takes (``PATH_MAX``). Looking such a path up fails with ENAMETOOLONG, or finds nothing, by the Python
    version; creating it fails with ENAMETOOLONG.

    Args:
        path: a file or folder to create, relative or absolute (``~`` expanded).
    """
    p = absolute_path(path)
    folder = p
    while folder.parent != folder:
        try:
            if folder.exists():
                break
        except OSError:  # ENAMETOOLONG: not there either
            pass
        folder = folder.parent
    try:
        name_max, path_max = os.pathconf(folder, "PC_NAME_MAX"), os.pathconf(folder, "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):  # AttributeError: no os.pathconf (Windows)
        name_max, path_max = 255, 4096
    longest = max((len(os.fsencode(name)) for name in p.parts), default=0)
    if longest > name_max:
        return f"a name in it is {longest} bytes long, longer than the {name_max} the file system takes"
    if len(os.fsencode(str(p))) >= path_max:  # PATH_MAX counts the terminating zero byte
        return f"it is {len(os.fsencode(str(p)))} bytes long, longer than the {path_max - 1} the system takes"
    return None


def os_error_message(error: OSError) -> str | None:
    """What a bundle or command-line tool prints alone for an ``OSError`` that is no fault of its code: a path too
    long (:func:`too_long_message`) or a write without room (:class:`OutputWriteError`); ``None`` for others."""
    return error.said if isinstance(error, OutputWriteError) else too_long_message(error)


def too_long_message(error: OSError) -> str | None:
    """What a command line tool says for ``error`` when it is ENAMETOOLONG (a path given that is too long to look up
    or create: ``OSError: [Errno 36] File name too long``), naming the path; ``None`` for any other error."""
    if error.errno != errno.ENAMETOOLONG:
        return None
    if not error.filename:
        return f"a path given is too long ({error.strerror})"
    name = os.fsdecode(error.filename)  # an error may carry the name as bytes
    return f"{name}: {path_length_problem(name) or 'too long'} ({error.strerror})"


def _folder_problem(p: Path) -> str | None:
    """:func:`output_dir_problem` of a non-empty path that is not too long (``OSError``: it cannot be looked up)."""
    if p.exists() and not p.is_dir():
        return f"{p} is an existing file, not a folder"
    probe = p
    while not probe.exists():  # the nearest existing folder above: creating p needs it to be a writable folder
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        return f"{probe} (above {p}) is an existing file, not a folder"
    # tried, not asked of os.access: its False does not say why (a read-only mount, or the permission bits)
    return _write_probe_problem(probe) if probe.exists() else None


def _write_probe_problem(folder: Path) -> str | None:
    """Why a file cannot be created in ``folder`` (tried with an empty hidden file, removed at once); ``None`` when
    it can, the folder's access and modification times restored. ``os.access`` answers from permission bits only:
    as root it says yes for read-only file systems and for ``/sys`` or ``/proc``."""
    try:
        before = os.stat(folder)
        fd, name = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
    except OSError as e:  # ENOENT in /proc, EROFS, EACCES...: the system's words, with what they mean here
        return f"cannot create files in {folder} ({e.strerror or e})"
    try:
        os.close(fd)
        os.unlink(name)
        # the folder's times as they were: a refused run leaves its folders exactly as found, and fingerprints
        # (a DICOM folder's time, medgmae.data.fingerprint) do not see a change
        os.utime(folder, ns=(before.st_atime_ns, before.st_mtime_ns))
    except OSError:
        pass
    return None


def absolute_path(path: str | os.PathLike) -> Path:
    """``path`` as an absolute path (``~`` expanded, made absolute against the current folder, links kept as
    given, not resolved): what a record read later from another folder names (``summary.json``), and how inputs given
    in several spellings (``a.png``, ``./a.png``) are compared.

    Args:
        path: a file or folder path, relative or absolute.

    Returns:
        The absolute path.
    """
    return Path(os.path.abspath(Path(path).expanduser()))


def given_more_than_once(paths) -> list[str]:
    """The paths among ``paths`` that name one file more than once, sorted, as absolute paths: ``a.png`` and
    ``./a.png`` are the same file, a link is a name of its own (as given, not resolved). The one check of the inputs
    of inference (fine-tuning's segmentation, GViT's classification), which refuse a file given twice.

    Args:
        paths: file paths (``str`` or ``os.PathLike``).
    """
    counts = Counter(absolute_path(p) for p in paths)
    return sorted(str(p) for p, n in counts.items() if n > 1)


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary name ends with ``path``'s own name, so writers that choose the format from the extension
    (nibabel's ``.nii.gz``, PIL's ``.png``) behave as for the final name, and starts with this host and process
    (:func:`medgmae.temp_names.temp_name`), so that what a killed writer left in a folder shared by runs can be told
    from what a live one is writing. On error the temporary file is removed and any existing ``path`` is left
    untouched.

    Args:
        path: the final file path; its parent folder is created if needed.

    Yields:
        The temporary path to write to.
    """
    path = Path(path)
    with _named_failure(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / temp_name(path.name)
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"nothing was written to the temporary file for {path}")
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # no room, or a read-only folder, whichever library wrote: named with the file
        if (failure := write_failure(path, e, tmp)) is None or failure is e:
            raise
        raise failure from e
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # a folder made read-only after the file was written: the error above tells
            pass


@contextmanager
def _named_failure(path: Path, staging: Path | None = None) -> Iterator[None]:
    """Raise an error of the block that :func:`~medgmae.write_failures.write_failure` knows (no room, no permission)
    as an :class:`OutputWriteError` naming ``path``, or with ``staging`` the file below ``path`` that the staged file
    it names was to become (a folder's own error names itself)."""
    try:
        yield
    except OSError as e:
        name = Path(os.fsdecode(e.filename)) if e.filename is not None and staging is not None else path
        if staging is not None and name.is_relative_to(staging):
            name = path / name.relative_to(staging)
        if (failure := write_failure(name, e)) is None or failure is e:
            raise
        raise failure from e


@contextmanager
def staged_outputs(target: str | os.PathLike, remove_stale: bool = False, last: Sequence[str] = ()) -> Iterator[Path]:
    """Yield a temporary folder beside ``target`` to write a set of outputs into; move them into ``target`` only if
    the block succeeds.

    The staging folder is a hidden sibling of ``target`` (same file system). When the block ends without an
    exception, every file written below it is moved to the same place below ``target`` with ``os.replace``, so each
    file appears whole (the set as a whole is not atomic). Files of ``target`` that the block did not write are kept
    (the outputs are merged into it, e.g. a saved state beside them) or, with ``remove_stale``, removed, so that
    ``target`` then holds exactly this run's outputs (e.g. no picture left from an earlier, longer run). When the
    block raises (Ctrl-C included), ``target`` is left untouched and is not created. No staging folder is left
    behind either way.

    Args:
        target: the output folder; it and its parents are created if needed.
        remove_stale: remove whatever ``target`` holds that the block did not write.
        last: names of files (in ``target`` itself) moved after every other, in this order (the others move in name
            order): what describes or is drawn from the rest, so that a stop between two moves leaves it beside the
            earlier run's files, never the new ones beside an earlier run's description.

    Yields:
        The staging folder to write into.
    """
    target = Path(target)
    with _named_failure(target):  # a read-only folder: named by the output folder, not the staging folder
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=staging_prefix(target.name), dir=target.parent))
    try:
        yield staging
        with _named_failure(target, staging):
            _move_into(staging, target, remove_stale, tuple(last))
    except OutputWriteError as e:  # named by the file it was to become, not by the staging folder's
        raise moved_failure(e, staging, target) from e.__cause__
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remove(path: Path) -> None:
    """Delete a file, a link or a folder with its content."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _move_into(src: Path, dst: Path, remove_stale: bool, last: tuple[str, ...] = ()) -> None:
    """Move everything below ``src`` to the same place below ``dst``, ``last`` after the rest (:func:`staged_outputs`)."""
    dst.mkdir(parents=True, exist_ok=True)
    written = set()
    for item in sorted(src.iterdir(), key=lambda p: (last.index(p.name) + 1 if p.name in last else 0, p.name)):
        written.add(item.name)
        dest, is_dir = dst / item.name, item.is_dir() and not item.is_symlink()
        if remove_stale and (dest.exists() or dest.is_symlink()) and (dest.is_dir() and not dest.is_symlink()) != is_dir:
            _remove(dest)  # a folder where this run wrote a file, or the other way round
        if is_dir:
            _move_into(item, dest, remove_stale)
        else:
            os.replace(item, dest)
    if remove_stale:
        for old in sorted(dst.iterdir()):
            if old.name not in written:
                _remove(old)


def save_json_atomic(obj: Any, path: str | os.PathLike, indent: int = 2) -> Path:
    """Write ``obj`` as JSON through :func:`atomic_write`; returns the final path."""
    with atomic_write(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=indent)
            f.write("\n")
    return Path(path)


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """The parsed content of a JSON file a user gives or edits; errors name the file and ``what`` it is.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: it is not UTF-8 text or not valid JSON (with the line and column).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(missing_path_message(path, f"{path}: the {what} was not found"))
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))  # -sig: a BOM (Windows Notepad) is skipped
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: the {what} is not UTF-8 text ({e})") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: the {what} is not valid JSON ({e})") from e


#: How far (mm, at any corner voxel) a NIfTI's qform and sform may place a voxel apart and still count as one frame
#: (the reader's check, :mod:`medgmae.data.reader`; the writer's).
FRAME_TOLERANCE_MM = 1e-3
#: The NIfTI ``descrip`` of a file earlier releases of :func:`save_nifti_atomic` wrote with a sheared affine, its
#: qform (code 1) the nearest frame: read without a warning (the reader warned about the sheared input they came from).
SHEARED_SFORM_NOTE = "sform sheared; qform is its nearest frame"


def save_nifti_atomic(
    data: np.ndarray, affine: np.ndarray, path: str | os.PathLike, dtype: np.dtype | type | None = None,
    description: str | None = None,
) -> Path:
    """Write a volume as NIfTI through :func:`atomic_write`; the one NIfTI writer of the toolkit.

    The header states what 3D Slicer, ITK and nibabel need to agree on the volume's place: the voxel-to-world
    ``affine`` as both qform and sform (code 1, scanner RAS) and millimetres as the spatial unit. A sheared affine
    (an unresampled gantry tilt's), which no qform can state, is the sform alone, qform code 0: ITK-based tools read
    the nearest qform in a sheared sform's stead (76 mm off at the far corner of 512 x 512 x 300 voxels tilted 20
    degrees) without a word; with none they refuse the file ("No orthonormal definition found"), as such an input.

    Args:
        data: the array in the file's own index order ``(I, J, K)`` (nibabel's), e.g. ``(H, W, D)``.
        affine: ``(4, 4)`` voxel-index-to-RAS-mm matrix for that index order.
        path: the destination (``.nii`` or ``.nii.gz``).
        dtype: the stored data type; ``data``'s own when ``None``.
        description: the header's ``descrip`` (at most 80 bytes of UTF-8); ``None``: nibabel's default (empty).

    Returns:
        The final path.

    Raises:
        ValueError: ``affine`` is not a finite ``(4, 4)`` matrix.
    """
    import nibabel as nib

    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ValueError(f"{path}: the affine must be a finite (4, 4) matrix, got shape {affine.shape}")
    array = np.ascontiguousarray(data if dtype is None else np.asarray(data, dtype=dtype))
    img = nib.Nifti1Image(array, affine)
    img.header.set_data_dtype(array.dtype)
    img.header.set_xyzt_units("mm", "sec")
    if description is not None:  # NIfTI's field holds 80 bytes: the rest would be cut
        img.header["descrip"] = description.encode("utf-8")
    img.set_qform(affine, code=1)  # nibabel stores the nearest rotation and voxel sizes (``affine`` unless sheared)
    img.set_sform(affine, code=1)
    from medgmae.data.grid import shear_offset_mm

    if shear_offset_mm(array.shape[:3], affine) > FRAME_TOLERANCE_MM:  # the qform holds the nearest unsheared frame
        img.set_qform(None)  # code 0: no qform rather than one placing the voxels elsewhere (ITK would read it)
    with atomic_write(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def bundle_config(bundle: str, name: str) -> str:
    """A bundle config of this checkout as a printed command should name it: ``bundles/<bundle>/configs/<name>``
    where that path exists from the current folder (the README's commands run from the repository root), else the
    checkout's absolute path (a run started from elsewhere with an absolute ``--config_file``), else the relative
    form (an installed package without its bundles).

    Args:
        bundle: the bundle folder, e.g. ``"unetr_finetune"``.
        name: the config file, e.g. ``"train.json"``.
    """
    relative = Path("bundles") / bundle / "configs" / name
    checkout = Path(__file__).resolve().parents[1] / relative
    if relative.is_file() or not checkout.is_file():
        return relative.as_posix()
    return str(checkout)


def skipped_files_note(
    others: Sequence[Path], root: Path, shown: int = 5, what: str = "images", said: Callable[[Path], str] | None = None
) -> str | None:
    """The line a reader logs or prints for the files it left out as not ``what`` (a ``README.txt``, a
    ``labels.csv``): ``"skipped 2 files that are not images: README.txt, a/labels.csv"``, the first ``shown`` named
    relative to ``root`` (then ``...``); ``None`` when there are none.

    Args:
        others: the files left out (of one folder or several below ``root``).
        root: the folder the names are relative to.
        shown: how many are named.
        what: what the reader reads (``"images"``, ``"volumes"``).
        said: what follows a file's name (e.g. ``" (DICOM without pixel data)"``, or ``""``); default nothing.
    """
    if not others:
        return None
    names = [str(p.relative_to(root)) + (said(p) if said else "") for p in others[:shown]]
    names += ["..."] if len(others) > shown else []
    one = ("an " if what[:1] in "aeiou" else "a ") + what[:-1] if what.endswith("s") else what  # "images": "an image"
    return f"skipped {plural(len(others), 'file')} that {f'is not {one}' if len(others) == 1 else f'are not {what}'}: {', '.join(names)}"
