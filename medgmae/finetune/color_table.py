"""The class colours of fine-tuned segmentations, and the colour table written beside them for 3D Slicer.

:data:`PALETTE` is a fixed list of 20 colours chosen to be told apart (Sasha Trubetskoy's "20 simple, distinct
colours"); class ``c >= 1`` takes entry ``(c - 1) mod 20``, background is not coloured. ``segmentation.png`` and
the colour table use the same entries, so a structure has one colour in both.

The table (``labels.ctbl``) follows 3D Slicer's colour table file format: a ``# Color table file`` header, then
one line per class, ``index name R G B A`` (0-255; spaces in a name become ``_``), background ``0 0 0 0``. Loaded
in Slicer (or chosen as the label map's colour node) it names each label value of the ``*_seg.nii.gz`` files.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from medgmae.files import atomic_write

__all__ = ["PALETTE", "COLOR_TABLE_NAME", "class_colour", "class_colours", "write_color_table"]

#: class colours (class c uses entry (c - 1) mod 20); background is not coloured
PALETTE = np.array(
    [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180], [70, 240, 240],
     [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [220, 190, 255], [170, 110, 40], [255, 250, 200],
     [128, 0, 0], [170, 255, 195], [128, 128, 0], [255, 215, 180], [0, 0, 128], [128, 128, 128]], dtype=np.float64
)  # fmt: skip

#: the colour table's file name, beside the segmentations
COLOR_TABLE_NAME = "labels.ctbl"


def class_colours(labels: np.ndarray) -> np.ndarray:
    """The RGB colours (0-255, float64) of an array of label values: :data:`PALETTE` entry ``(c - 1) mod 20``,
    black for 0.

    Args:
        labels: integer label values of any shape, all ``>= 0``.

    Returns:
        ``labels.shape + (3,)`` colours.

    Raises:
        ValueError: a negative label value.
    """
    labels = np.asarray(labels).astype(np.int64)
    if labels.size and labels.min() < 0:
        raise ValueError(f"class index must be >= 0, got {int(labels.min())}")
    colours = np.take(PALETTE, (labels - 1) % len(PALETTE), axis=0)  # a copy: PALETTE itself is never written
    colours[labels == 0] = 0.0
    return colours


def class_colour(index: int) -> tuple[int, int, int]:
    """The RGB colour (0-255) of class ``index`` (:func:`class_colours` of one value), black for 0.

    Args:
        index: the label value, 0 for background.

    Returns:
        ``(R, G, B)``.
    """
    return tuple(int(v) for v in class_colours(np.array(int(index))))


def write_color_table(path: str | Path, names: Sequence[str]) -> Path:
    """Write a 3D Slicer colour table naming label values ``0..len(names) - 1`` (atomically).

    Args:
        path: the file to write (``.ctbl`` or ``.txt``, as Slicer reads them).
        names: class names in label order, background first.

    Returns:
        The path written.

    Raises:
        ValueError: fewer than two names, or an empty name.
    """
    names = [str(n) for n in names]
    if len(names) < 2:
        raise ValueError(f"colour table {path}: need at least 2 class names (background first), got {names}")
    if any(not n.strip() for n in names):
        raise ValueError(f"colour table {path}: class names must not be empty, got {names}")
    lines = [f"# Color table file {Path(path).name}", f"# {len(names)} values"]
    for index, name in enumerate(names):
        alpha = 0 if index == 0 else 255
        (r, g, b), label = class_colour(index), re.sub(r"\s+", "_", name.strip())
        lines.append(f"{index} {label} {r} {g} {b} {alpha}")
    with atomic_write(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(path)
