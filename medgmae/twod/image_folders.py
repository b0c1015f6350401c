"""The one listing of the 2D readers' image folders (2D GMAE training folders, GViT class folders, the images GViT
classifies): which files are images, which are left out, and the words for those left out.

A file is an image by its ending (PNG/JPEG/BMP/TIFF/NIfTI/DICOM) or, without one, by its DICOM preamble (a
scanner's ``IM0001``); a DICOM file that holds no pixel data (a ``DICOMDIR``, a structured report, a presentation
state, a key object selection) is not one, decided from its header alone
(:func:`medgmae.twod.dicom_frames.dicom_without_pixels`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from medgmae.data.reader import DICOM_FILE_SUFFIXES
from medgmae.data.volume_folders import walk_following_links
from medgmae.twod.dicom_frames import dicom_without_pixels
from medgmae.twod.images import IMAGE_SUFFIXES, has_dicom_preamble

__all__ = ["listed_files", "skipped_files_note", "no_images_message"]


def _visible_files(folder: Path, recursive: bool) -> list[Path]:
    """The files in ``folder`` (and its sub-folders), sorted, hidden ones (macOS's ``._x.png`` resource files,
    anything under a hidden folder) left out; a link whose target is gone (storage not mounted) is one, so that
    the reader names it instead of the listing passing over it; linked sub-folders are searched too."""
    if recursive:  # linked sub-folders too, each real folder once (``rglob`` passes over linked folders)
        listed = [root / name for root, _, names in walk_following_links(folder) for name in names]
    else:
        listed = list(folder.iterdir())
    return sorted(p for p in listed if (p.is_file() or (p.is_symlink() and not p.exists()))
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))  # fmt: skip


def listed_files(folder: Path, recursive: bool = True) -> tuple[list[Path], list[Path]]:
    """``(image files, other files)`` of ``folder`` (and its sub-folders), each sorted, in one listing: the images
    (PNG/JPEG/BMP/TIFF/NIfTI/DICOM by ending, and DICOM files without an ending, such as a scanner's ``IM0001``, by
    content) and the files left out as not images (which :func:`skipped_files_note` names); hidden ones (macOS's
    ``._x.png`` resource files, anything under a hidden folder) in neither. The one listing of the 2D readers:
    training folders, class folders and the images GViT classifies."""
    images, others = [], []
    for p in _visible_files(folder, recursive):
        (images if _is_image_file(p) else others).append(p)
    return images, others


def _is_dicom_file(path: Path) -> bool:
    """A DICOM file by its ending or its preamble (:func:`~medgmae.twod.images.has_dicom_preamble`)."""
    return path.name.lower().endswith(DICOM_FILE_SUFFIXES) or has_dicom_preamble(path)


def _is_image_file(path: Path) -> bool:
    """An image by its ending, or a DICOM file by its ending or preamble that holds pixel data (a ``DICOMDIR``, a
    structured report, a presentation state hold none: :func:`~medgmae.twod.dicom_frames.dicom_without_pixels`,
    which reads the header only). Only files named as DICOM or without an image ending are opened."""
    name = path.name.lower()
    if name.endswith(IMAGE_SUFFIXES) and not name.endswith(DICOM_FILE_SUFFIXES):
        return True
    return _is_dicom_file(path) and not dicom_without_pixels(path)


def skipped_files_note(others: Sequence[Path], root: Path, shown: int = 5) -> str | None:
    """The line a reader logs for the files :func:`listed_files` left out as not images (a ``README.txt``, a
    ``labels.csv``, a ``DICOMDIR``): ``"skipped 3 files that are not images: DICOMDIR (DICOM without pixel data),
    README.txt, a/labels.csv"``, the first ``shown`` named relative to ``root`` (then ``...``), a DICOM file among
    them (by its ending or preamble: one without pixel data) said to be one; ``None`` when there are none.

    Args:
        others: the files left out (the second list of :func:`listed_files`, of one folder or several).
        root: the folder the names are relative to.
        shown: how many are named.
    """
    from medgmae.files import skipped_files_note as note

    return note(others, root, shown, "images", lambda p: " (DICOM without pixel data)" if _is_dicom_file(p) else "")


def no_images_message(where: str, others: Sequence[Path], root: Path, verb: str = "holds") -> str:
    """The error of a folder that holds no images: ``"<where> holds no images (.png, ...)"``, then the files it
    left out as not images (:func:`skipped_files_note`), so that a folder of a ``README.txt`` and a ``DICOMDIR``
    says what it holds.

    Args:
        where: the folder's name in the message (``"dataset_dir /data"``).
        others: the files :func:`listed_files` left out.
        root: the folder their names are relative to.
        verb: ``"hold"`` for several folders.
    """
    skipped = skipped_files_note(others, root)
    return f"{where} {verb} no images ({', '.join(IMAGE_SUFFIXES)})" + (f"; {skipped}" if skipped else "")
