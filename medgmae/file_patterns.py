"""File patterns in lists of inputs: ``--input_files "['/data/*/ct.nii.gz']"`` (segmentation) and GViT's
``--images``, expanded in one way (``glob``, ``**`` spanning folders; a file whose name holds ``[`` or ``*`` is taken as
named, and so is the longest leading folder of a pattern that exists as typed). No torch or MONAI import."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Sequence

from medgmae.data.datalist import DatasetError

__all__ = ["expand_input_patterns"]


def expand_input_patterns(input_files: Sequence[str | Path], flag: str = "input_files") -> list[str]:
    """Each entry of ``input_files`` as given, or, for a file pattern (``*``, ``?``, ``[...]``; ``**`` spans
    folders) that names no existing file, the paths it matches (files, or DICOM folders), sorted; ``~`` is expanded
    first. The longest leading part of a pattern that exists as typed is taken literally (a folder ``[1]``).

    Args:
        input_files: paths or patterns, as ``--input_files`` lists them (quoted, so the shell left them alone).
        flag: the setting, as the message names it.

    Returns:
        The paths, in the order given, each pattern's matches in sorted order at its place.

    Raises:
        DatasetError: a pattern matches no file (named: segmenting nothing, or the rest only, would hide it).
    """
    paths, empty = [], []
    for entry in input_files:
        text = os.path.expanduser(str(entry))
        if not glob.has_magic(text) or os.path.exists(text):  # a file whose name holds [ or * is taken as named
            paths.append(text)
            continue
        matches = sorted(glob.glob(_literal_folders(text), recursive=True))  # DICOM folders match as folders
        if not matches:
            empty.append(str(entry))
        paths.extend(matches)
    if empty:
        hint = " ([...] in a pattern is a glob character class: write [[] for a literal [)" if any("[" in e for e in empty) else ""
        raise DatasetError(f"{flag}: no file matches {', '.join(repr(e) for e in empty)}{hint}")
    return paths


def _literal_folders(pattern: str) -> str:
    """``pattern`` with its longest leading part that exists as typed (``/data/[1]/imagesTr`` of
    ``/data/[1]/imagesTr/*.nii.gz``) escaped, so that a folder named with ``[``, ``*`` or ``?`` is that folder, not
    a pattern matching a sibling (``/data/1``); the rest stays a pattern."""
    parts = pattern.split(os.sep)
    for i in range(len(parts) - 1, 0, -1):
        head = os.sep.join(parts[:i])
        if head and os.path.exists(head):
            return os.sep.join([glob.escape(head), *parts[i:]])
    return pattern
