"""The 2D intensity ``window``: the one function that reads the setting, and the window a model recorded.

A window ``(low, high)`` names the stored intensities of NIfTI and DICOM files (HU for CT) that
:func:`medgmae.twod.images.read_image` maps to 0 and 1. The setting arrives in several spellings (a bundle key,
``--window "[-1000, 1000]"``, a list read back from a model file, a tuple in code); :func:`window_setting` turns
every one of them into ``(low, high)`` or ``None``, and every layer that takes a window (the bundles' up-front
check, the datasets, the image reader, ``medgmae-2d``, GViT evaluation and inference) calls it rather than checking
on its own. :func:`input_window` chooses the window GViT inference and evaluation read their NIfTI/DICOM inputs with
(a ``window`` given to them, else the model's recorded one) and logs the choice.
:func:`apply_window` maps an image's values through a window (or, without one, the 0.5/99.5 percentiles).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["window_setting", "given_window", "recorded_window", "input_window", "apply_window", "no_window_note"]

logger = logging.getLogger("medgmae.gvit")


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


def given_window(window: Any) -> tuple[float, float] | None:
    """The ``window`` setting of GViT inference or evaluation read by :func:`window_setting`, a bad one named as
    ``window``.

    Args:
        window: ``None``, or ``[low, high]`` in any spelling :func:`window_setting` reads.

    Returns:
        ``(low, high)`` or ``None``.

    Raises:
        ValueError: not ``null`` or two finite numbers with ``high > low``; the message starts ``window:``.
    """
    try:
        return window_setting(window)
    except ValueError as e:
        raise ValueError(f"window: {e}") from None


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


def no_window_note(model_path: str | os.PathLike, count: int, data_settings: Mapping | None = None) -> tuple[int, str]:
    """The line (and its logging level) GViT inference and evaluation log when ``count`` NIfTI/DICOM inputs meet a
    model file that records no window; ``(logging.INFO, "")`` when ``count`` is 0.

    What it says follows what training did (``data_settings``, the model's recorded data settings): a model trained
    on a dataset with window null scaled each of its NIfTI/DICOM images on its own, as the inputs are now (an INFO
    line says both do); one trained on the default task before its window was recorded saw PNGs written at -500..500
    HU (a warning suggests ``--window "[-500, 500]"``); for a file recording no data, training's scaling is unknown (a
    warning suggests giving it).

    Args:
        model_path: the model file.
        count: the NIfTI/DICOM images among the inputs.
        data_settings: the data settings the model records (``None``: none recorded).

    Returns:
        ``(level, line)``.
    """
    if count < 1:
        return logging.INFO, ""
    images = "1 NIfTI/DICOM image is" if count == 1 else f"{count} NIfTI/DICOM images are"
    own = f"{images} scaled each by its own DICOM window or 0.5/99.5 percentiles"
    data = dict(data_settings or {})
    if data.get("dataset_dir"):
        return logging.INFO, (f"{model_path} records no intensity window (trained with window null): {own}, as "
                              "training scaled its NIfTI/DICOM images; --window \"[low, high]\" maps them at a "
                              "fixed window instead (HU for CT)")  # fmt: skip
    if data:  # the default task, before its window was recorded (0.3.5)
        return logging.WARNING, (f"{model_path} records no intensity window (written before the window was recorded): "
                                 f"{own}, while its training slices (the default task) were PNGs written at -500..500 "
                                 "HU; give that window with --window \"[-500, 500]\"")  # fmt: skip
    return logging.WARNING, (f"{model_path} records no intensity window nor training data: {own}, which may not be how "
                             "the training images were scaled; give the window they were scaled at with --window "
                             "\"[low, high]\" (HU for CT)")  # fmt: skip


def input_window(
    window: Any,
    recorded: tuple[float, float] | None,
    model_path: str | os.PathLike,
    count: int,
    where: str,
    data_settings: Mapping | None = None,
) -> tuple[tuple[float, float] | None, str]:
    """The window GViT inference and evaluation read their NIfTI/DICOM inputs with, and where it came from; the
    choice is logged.

    A given ``window`` wins (as fine-tuning's ``hu_range`` does over the recorded one), with a warning when it
    differs from the window the model records; ``None`` keeps the recorded window, or, without one, each image's
    own DICOM window or 0.5/99.5 percentiles (:func:`no_window_note`). PNG/JPEG/BMP/TIFF pictures are read as they
    are, as training reads them: a window given for inputs holding no NIfTI/DICOM image maps none of them (a warning
    says so, as training's does) and is not used.

    Args:
        window: the ``window`` setting (``None``, or ``[low, high]`` in any spelling :func:`window_setting` reads).
        recorded: the model's recorded window (:func:`recorded_window`), or ``None``.
        model_path: the model file, as the messages name it.
        count: the NIfTI/DICOM images among the inputs.
        where: the inputs, as the messages name them (``"inference inputs"``).
        data_settings: the model's recorded data settings, for :func:`no_window_note`.

    Returns:
        ``(low, high)`` or ``None``, and its origin: ``"given"``, ``"recorded in <model_path>"``, ``"none: each
        image's own DICOM window or 0.5/99.5 percentiles"`` or ``"given, unused: no NIfTI/DICOM inputs"``.

    Raises:
        ValueError: ``window`` is not ``null`` or ``[low, high]`` (two finite numbers, ``high > low``), naming it.
    """
    given = given_window(window)
    if given is None:
        if recorded is None:
            level, note = no_window_note(model_path, count, data_settings)
            if note:
                logger.log(level, note)
            return None, "none: each image's own DICOM window or 0.5/99.5 percentiles"
        if count:
            logger.info("%s: %d NIfTI/DICOM images mapped from the window %g..%g recorded in %s to 0..1 (clipped)",
                        where, count, *recorded, model_path)  # fmt: skip
        return recorded, f"recorded in {model_path}"
    if not count:
        logger.warning("%s hold no NIfTI/DICOM images: window %g..%g maps none of them (PNG/JPEG/BMP/TIFF pictures "
                       "are read as they are, as training reads them); leave --window out for pictures", where, *given)  # fmt: skip
        return None, "given, unused: no NIfTI/DICOM inputs"
    if recorded is not None and given != recorded:
        logger.warning("window %g..%g differs from the window %g..%g recorded in %s: NIfTI/DICOM inputs are scaled "
                       "differently from the model's training images", *given, *recorded, model_path)  # fmt: skip
    logger.info("%s: %d NIfTI/DICOM images mapped from the given window %g..%g to 0..1 (clipped)", where, count, *given)
    return given, "given"


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
