"""A folder of volumes as a datalist: every volume file and DICOM series folder below it, label maps, masks and a
Decathlon layout's test images left out by name, and what was left out logged.

Volume files are those with an ending of :data:`~medgmae.data.reader.VOLUME_SUFFIXES`; a folder without them is a
DICOM series when ITK reads one from it. Other files are left out too, counted in a log line; DICOM files beside
volume files (a series saved loose among NIfTI files) are warned about, as their series is not read.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Iterator

from medgmae.data.reader import VOLUME_SUFFIXES, is_volume_path, volume_stem

__all__ = ["LABEL_NAME", "folder_datalist", "walk_following_links"]

logger = logging.getLogger("medgmae.data")

#: Files of a folder read for the DICOM preamble when they lie beside volume files.
_DICOM_PEEK = 20


#: A file or folder name marking label maps or masks (``labelsTr``, ``case_001_label.nii.gz``, ``liver_seg.mha``,
#: ``body-mask.nrrd``): a folder of volumes is CT, and such files are left out of it (pre-training would window
#: label values as HU). A name part delimited by ``_ - .`` or the name's ends; ``labels`` also as a prefix.
LABEL_NAME = re.compile(r"^labels|(^|[_.-])(labels?|segs?|segmentations?|masks?)([_.-]|$)", re.IGNORECASE)


def walk_following_links(folder: str | Path) -> Iterator[tuple[Path, list[str], list[str]]]:
    """``os.walk`` of ``folder`` that enters linked sub-folders too (a dataset gathered as links to where its parts
    lie), each real folder once: a link to the walked folder or to a folder above it (which would walk around the
    dataset), or a second link to a folder already walked, is not entered. As with ``os.walk``, the caller may cut the yielded sub-folder list to those to search.

    Args:
        folder: the folder to walk.

    Yields:
        ``(folder, sub-folder names, file names)``, the folder as reached (through its links, not resolved).
    """
    seen: set[str] = set()
    top = os.path.realpath(folder)
    for root, dirs, files in os.walk(Path(folder), followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        yield Path(root), dirs, files
        # a link to the folder walked or to one above it (``..``, ``/``, the home folder) would walk all around it
        dirs[:] = [d for d in dirs if not _holds(os.path.realpath(os.path.join(root, d)), top)]


def _holds(folder: str, path: str) -> bool:
    """Whether the real folder ``folder`` is ``path`` or one above it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def folder_datalist(folder: str | Path) -> list[dict]:
    """``{"image": path}`` for every volume file and DICOM series folder in ``folder`` and its sub-folders, in
    sorted path order, label maps left out (:data:`LABEL_NAME`; how many is logged).

    A folder holding volume files is searched for those (and its sub-folders, linked ones too:
    :func:`walk_following_links`); one without them is asked whether
    it holds a DICOM series (GDCM's console warnings about non-DICOM files are silenced meanwhile). A Decathlon
    layout without ``dataset.json`` (``imagesTr/``, ``labelsTr/``) gives its training images: its ``imagesTs/``
    (the held-out test images) is left out, logged, so that pre-training never sees a benchmark's test cases; a
    PACS export (patient / study / series folders) its series. Hidden files (macOS's ``._ct.nii.gz`` resource
    files, which the Decathlon's archives hold) are skipped; other files that are no volume are counted in a log
    line, and DICOM files beside volume files warned about (their series is not read).
    """
    import SimpleITK as sitk

    walk = {"found": [], "labels": [], "label_dirs": [], "test_dirs": [], "others": [], "loose_dicom": []}
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        for root, dirs, files in walk_following_links(folder):
            _visit(root, dirs, [f for f in files if not f.startswith(".")], walk)
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
    _log_left_out(Path(folder), walk)
    return [{"image": str(p)} for p in sorted(walk["found"])]


def _visit(here: Path, dirs: list[str], files: list[str], walk: dict) -> None:
    """One folder of :func:`folder_datalist`'s walk: its volumes, series and left-out files into ``walk``, and
    ``dirs`` cut to the sub-folders to search."""
    real = {d: Path(os.path.realpath(here / d)) for d in dirs}  # a link is left out as its target is (extra -> imagesTs)
    walk["label_dirs"] += [here / d for d in dirs if LABEL_NAME.search(d) or LABEL_NAME.search(real[d].name)]
    walk["test_dirs"] += [here / d for d in dirs if "imagesTs" in (d, real[d].name) and (real[d].parent / "imagesTr").is_dir()
                          and not LABEL_NAME.search(d)]  # fmt: skip
    dirs[:] = sorted(d for d in dirs if not LABEL_NAME.search(d) and not LABEL_NAME.search(real[d].name) and not d.startswith(".")
                     and here / d not in walk["test_dirs"])  # fmt: skip
    volumes = [f for f in files if f.lower().endswith(VOLUME_SUFFIXES)]
    walk["labels"] += [here / f for f in volumes if LABEL_NAME.search(volume_stem(f))]
    walk["found"] += [here / f for f in volumes if not LABEL_NAME.search(volume_stem(f))]
    if not volumes and files and not LABEL_NAME.search(here.name) and is_volume_path(here):
        walk["found"].append(here)  # a DICOM series (the folder given may be one itself)
        return
    others = sorted(here / f for f in files if f not in volumes)
    walk["others"] += others
    if volumes and any(_is_dicom(p) for p in others[:_DICOM_PEEK]):
        walk["loose_dicom"].append(here)


def _is_dicom(path: Path) -> bool:
    """Whether ``path`` starts with the DICOM preamble's ``DICM`` (at byte 128)."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _log_left_out(folder: Path, walk: dict) -> None:
    """Log what :func:`folder_datalist` left out of ``folder``, and warn of DICOM files it did not read."""
    if walk["labels"] or walk["label_dirs"]:
        logger.info("%s: left out label maps and masks by name: %s", folder, _left_out_note(folder, walk["labels"], walk["label_dirs"]))
    if walk["test_dirs"]:
        logger.info("%s: left out the test images of its Decathlon layout: %s (list them in a datalist to use them)",
                    folder, _left_out_note(folder, [], walk["test_dirs"]))  # fmt: skip
    if walk["others"]:
        logger.info("%s: left out %s that %s (readable: %s files and DICOM series folders)", folder,
                    _left_out_note(folder, walk["others"], []), "is not a volume" if len(walk["others"]) == 1 else "are not volumes",
                    ", ".join(VOLUME_SUFFIXES))  # fmt: skip
    for here in walk["loose_dicom"]:
        logger.warning("%s holds DICOM files beside volume files: their series is not read (a DICOM series is read "
                       "from a folder of its own: move its files into one)", here)  # fmt: skip


def _left_out_note(folder: Path, files: list[Path], dirs: list[Path]) -> str:
    """``"40 files in labelsTr/, 2 files (e.g. case_1_seg.nii.gz)"``: what :func:`folder_datalist` left out, each
    left-out folder by its path below ``folder`` with the files it holds (volumes or DICOM slices)."""
    parts = []
    for d in sorted(dirs):
        n = sum(not f.startswith(".") for _, _, names in os.walk(d) for f in names)
        parts.append(f"{n} file{'s' if n != 1 else ''} in {d.relative_to(folder).as_posix()}/")
    if files:
        parts.append(f"{len(files)} file{'s' if len(files) > 1 else ''} (e.g. {min(files).name})")
    return ", ".join(parts)
