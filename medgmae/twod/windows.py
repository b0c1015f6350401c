"""The 2D intensity ``window``: the one function that reads the setting, and the window a model recorded.

A window ``(low, high)`` names the stored intensities of NIfTI and DICOM files (HU for CT) that
:func:`medgmae.twod.images.read_image` maps to 0 and 1. The setting arrives in several spellings (a bundle key,
``--window "[-1000, 1000]"``, a list read back from a model file, a tuple in code); :func:`window_setting` turns
every one of them into ``(low, high)`` or ``None``, and every layer that takes a window (the bundles' up-front
check, the datasets, the image reader, ``medgmae-2d``, GViT evaluation) calls it rather than checking on its own.
:func:`apply_window` maps an image's values through a window (or, without one, the 0.5/99.5 percentiles).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["window_setting", "recorded_window", "apply_window", "no_window_note"]


def window_setting(value: Any) -> tuple[float, float] | None:
    """A ``window`` setting (a bundle key, e.g. ``--window "[-1000, 1000]"``) as ``(low, high)``, or ``None``.

    ``None``, ``""``, ``"none"`` and ``"null"`` mean no window; otherwise two numbers with ``high > low``, the
    stored intensities (HU for CT) that :func:`~medgmae.twod.images.read_image` maps to 0 and 1 in NIfTI and DICOM
    files.

    Args:
        value: the setting: ``None``, a string, or a sequence of two numbers.

    Returns:
        ``(low, high)`` as floats, or ``None`` for no window.

    Raises:
        ValueError: anything else, naming the value.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return None
    values = [v for v in re.split(r"[,\s]+", value.strip().strip("[]()")) if v] if isinstance(value, str) else value
    try:
        low, high = (float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"expected null or [low, high] (e.g. HU: [-1000, 1000]), got {value!r}") from None
    if not (np.isfinite([low, high]).all() and high > low):
        raise ValueError(f"expected [low, high] with high > low, got {value!r}")
    return low, high


def recorded_window(data_settings: Mapping | None, source: str | os.PathLike) -> tuple[float, float] | None:
    """The intensity window a 2D model was trained with: ``data_settings["window"]`` (the settings a model file or
    training checkpoint records, a model's ``data_settings``) read by :func:`window_setting`.

    Args:
        data_settings: the recorded data settings; ``None`` when the file records none.
        source: the file they came from, for the error message.

    Returns:
        ``(low, high)``, or ``None`` when no window was recorded (or trained with none).

    Raises:
        ValueError: the recorded window is not ``[low, high]``; the message names ``source``.
    """
    try:
        return window_setting((data_settings or {}).get("window"))
    except ValueError as e:
        raise ValueError(f"{source}: the recorded training window is unusable ({e})") from None


def no_window_note(model_path: str | os.PathLike, count: int) -> str:
    """The line GViT inference and evaluation log when ``count`` NIfTI/DICOM inputs meet a model file that records
    no window: each is scaled on its own, not as the model's training images were; ``""`` when ``count`` is 0.

    Args:
        model_path: the model file.
        count: the NIfTI/DICOM images among the inputs.

    Returns:
        The line, or ``""``.
    """
    if count < 1:
        return ""
    images = "1 NIfTI/DICOM image is" if count == 1 else f"{count} NIfTI/DICOM images are"
    return (f"{model_path} records no intensity window (trained with window null, or written before the window was "
            f"recorded): {images} scaled each by its own DICOM window or 0.5/99.5 percentiles, not as the training "
            "images were; retrain with a window in HU (e.g. --window \"[-1000, 1000]\") for CT")


def apply_window(
    arr: np.ndarray, path: Path, window: Sequence[float] | None, source: str = "given"
) -> tuple[np.ndarray, dict]:
    """``arr`` (a NIfTI slice or DICOM frame read from ``path``) windowed to ``[0, 1]``, and the window used: ``{"window": [low, high], "window_source": ...}``
    (``source`` for a given window, else ``"percentiles 0.5/99.5"``, or ``"min-max"`` where they coincide)."""
    arr = arr.astype(np.float32)
    if arr.size == 0:
        raise ValueError(f"{path}: empty image")
    if not np.isfinite(arr).all():
        raise ValueError(f"{path}: image contains NaN or infinite values")
    if window is not None:
        lo, hi = float(window[0]), float(window[1])
    else:
        lo, hi = (float(v) for v in np.percentile(arr, [0.5, 99.5]))
        source = "percentiles 0.5/99.5"
        if hi <= lo:
            lo, hi = float(arr.min()), float(arr.max())
            source = "min-max"
    used = {"window": [lo, hi], "window_source": source}
    if hi <= lo:
        return np.zeros_like(arr), used
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0), used
