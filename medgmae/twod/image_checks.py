"""What ``medgmae-2d`` checks of the image it read, before the model sees it.

* :func:`blank_image_problem`: an image whose pixels all hold one value (an empty export, a slice outside the
  body, a slice the window shows as one value) is refused: its layers, mask and edges would mean nothing.
* :func:`upscale_note`: a much smaller image than the model's input (a 1 x 1 picture) is resized to it by design;
  a short note says so.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from medgmae.twod.images import slice_text

__all__ = ["blank_image_problem", "upscale_note", "UPSCALE_NOTED"]

#: An image upscaled more than this on an edge to the model's input size is noted (:func:`upscale_note`).
UPSCALE_NOTED = 4


def blank_image_problem(path: str | os.PathLike, image: np.ndarray, source: dict) -> str | None:
    """Why an image cannot be layered when every pixel holds one value (per channel), ``None`` otherwise; a
    one-pixel image is left to :func:`upscale_note`.

    Args:
        path: the image file, as the message names it.
        image: ``(C, H, W)`` on the 0-1 scale, as :func:`~medgmae.twod.images.read_image_source` read it.
        source: its ``source`` record (the slice and window of a NIfTI/DICOM image, a 16-bit picture's range).

    Returns:
        ``"<path>[, <slice>]: every pixel is <value>, a blank image: ..."``: a NIfTI/DICOM slice's value (or what
        the window given shows of it), a 16-bit picture's stored value, else the 0-1 value (and of 255).
    """
    if image[0].size <= 1 or not (image == image[:, :1, :1]).all():
        return None
    which = source.get("slice")
    where = f"{path}, {slice_text(which)}" if which and which["count"] > 1 else str(path)
    return f"{where}: every pixel is {_value_words(image[:, 0, 0], source)}, a blank image: its layers, mask and edges would mean nothing"


def _value_words(values: np.ndarray, source: dict) -> str:
    """The one value of a blank image (``values``: one per channel, 0-1 scale) in the file's terms."""
    window, stored = source.get("window"), source.get("stored_range")
    if window is not None:  # a NIfTI slice or DICOM frame, windowed to 0..1
        lo, hi = float(window[0]), float(window[1])
        if hi <= lo:  # the min-max window of a slice of one value
            return f"{lo:g}"
        v = float(values[0])  # a window given: every value beyond one of its ends, or one value inside it
        return f"beyond one end of the window {lo:g} {hi:g}" if v in (0.0, 1.0) else f"{v:.3g} through the window {lo:g} {hi:g}"
    if stored is not None:  # a 16-bit (or 32-bit integer) picture
        return f"{stored[0]}"
    words = [f"{float(v):.4g}" + (f" ({round(float(v) * 255)} of 255)" if 0 < v and abs(v * 255 - round(float(v) * 255)) < 1e-3 else "")
             for v in values]  # fmt: skip
    return words[0] if len(set(words)) == 1 else f"({', '.join(words)})"


def upscale_note(name: str, image_hw: Sequence[int], model_hw: Sequence[int]) -> str | None:
    """A short note when an image of ``image_hw`` pixels is upscaled more than :data:`UPSCALE_NOTED` times on an
    edge to the model's ``model_hw`` input; ``None`` otherwise.

    Args:
        name: the image's file name.
        image_hw: its ``(H, W)`` as read.
        model_hw: the model's input ``(H, W)``.

    Returns:
        ``"<name> is upscaled from 1x1 to the model's 16x16 input"``, or ``None``.
    """
    (h, w), (mh, mw) = (int(n) for n in image_hw), (int(n) for n in model_hw)
    if mh <= UPSCALE_NOTED * h and mw <= UPSCALE_NOTED * w:
        return None
    return f"{name} is upscaled from {h}x{w} to the model's {mh}x{mw} input"
