"""What a volume's values say about its units: a CT in Hounsfield units, linear attenuation in 1/mm, a label map,
a CT stored as HU + 1024 without its rescale intercept, or one shifted down by 1024 HU (its intercept applied twice);
and the one warning given when a model whose
pre-processing (:class:`~medgmae.preprocessing.PreprocessingSpec`) is a CT window in HU is given anything else.

Zero-shot inference, UNETR segmentation's pre-check, the 3D input checks and ``medgmae-recon``'s unit check all
decide through here.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the spec is only read here; importing it at run time is not needed
    from medgmae.preprocessing import PreprocessingSpec

__all__ = [
    "ATTENUATION_BOUNDS", "ATTENUATION_LIKE_HU", "SHIFTED_HU_MIN", "SHIFTED_DOWN_HU_MAX", "SHIFTED_DOWN_HU_MEDIAN",
    "LABEL_MAP_MAX_VALUES", "looks_like_shifted_hu", "looks_like_shifted_down_hu", "looks_like_hu", "range_is_hu", "looks_like_attenuation", "range_is_attenuation", "looks_like_label_map", "value_kind", "window_expects_hu", "warn_if_not_hu",
]  # fmt: skip

logger = logging.getLogger("medgmae")

#: Bounds of attenuation volumes in 1/mm: water is 0.0192, dense bone about 0.05, metals a few 1/mm, and an FBP's
#: undershoot stays a fraction of the volume's maximum. A volume below ``min`` or above ``max`` is a CT in HU (air
#: -1000, soft tissue 20-80).
ATTENUATION_BOUNDS = {"min": -100.0, "max": 10.0}
#: A CT in HU has air (-1000) or tissue (tens of HU) in it; a volume whose every value lies within this magnitude is
#: an attenuation volume in 1/mm instead.
ATTENUATION_LIKE_HU = 1.0


def _value_range(array) -> tuple[float, float]:
    """``(min, max)`` of a NumPy array or torch tensor, any shape; ``ValueError`` when it is empty."""
    if getattr(array, "size", None) == 0 or (callable(getattr(array, "numel", None)) and array.numel() == 0):
        raise ValueError("the volume is empty: no values to tell its units from")
    return float(array.min()), float(array.max())


def looks_like_hu(array) -> bool:
    """Whether ``array`` (NumPy or torch, any shape) reaches past :data:`ATTENUATION_BOUNDS`, so cannot be linear
    attenuation in 1/mm: a CT in Hounsfield units."""
    return range_is_hu(*_value_range(array))


def range_is_hu(lo: float, hi: float) -> bool:
    """:func:`looks_like_hu` of a volume's ``(min, max)``, for a caller that has read its range."""
    return lo < ATTENUATION_BOUNDS["min"] or hi > ATTENUATION_BOUNDS["max"]


def looks_like_attenuation(array) -> bool:
    """Whether every value of ``array`` (NumPy or torch, any shape) lies within :data:`ATTENUATION_LIKE_HU` in
    magnitude, as in a linear attenuation volume in 1/mm (a CT in HU has air at -1000 or tissue at tens of HU)."""
    return range_is_attenuation(*_value_range(array))


def range_is_attenuation(lo: float, hi: float) -> bool:
    """:func:`looks_like_attenuation` of a volume's ``(min, max)``, for a caller that has read its range."""
    return max(abs(lo), abs(hi)) <= ATTENUATION_LIKE_HU


def window_expects_hu(spec: PreprocessingSpec) -> bool:
    """Whether ``spec``'s intensity window is a CT window in HU: it reaches below 0 (fat, lung, air) and is wider
    than ten times :data:`ATTENUATION_LIKE_HU`. Windows of other modalities (e.g. MRI, ``[0, 1000]``, or
    normalised intensities, ``[-1, 1]``) are not."""
    a0, a1 = spec.hu_window
    return a0 < 0 and a1 - a0 > 10 * ATTENUATION_LIKE_HU


#: A volume whose smallest value is at least this and whose largest is above 1000 is no CT in HU (which has air at
#: -1000 HU): another modality, or a CT stored as HU + 1024 (unsigned) without its rescale intercept.
SHIFTED_HU_MIN = -50.0

#: A volume whose largest value is below this reaches no soft tissue (fat -100 HU, water 0, muscle 40), which every
#: CT of a body holds: a CT shifted down by 1024 HU (its rescale intercept applied twice), whose tissue reads as air.
SHIFTED_DOWN_HU_MAX = -200.0
#: A volume half of whose voxels (the median of about a million evenly spaced ones) lie below this, far below air
#: (-1000 HU), is a CT shifted down by 1024 HU too, even when dense bone or metal reaches above
#: :data:`SHIFTED_DOWN_HU_MAX` (a real CT's padding outside its circular field of view is about a fifth of a slice).
SHIFTED_DOWN_HU_MEDIAN = -1500.0

#: At most this many distinct values, all integers in ``[0, 255]``: a label map (TotalSegmentator's have up to 118),
#: not a CT (whose air is -1000 HU and whose noise alone gives hundreds of values).
LABEL_MAP_MAX_VALUES = 128


def _sample(array) -> np.ndarray:
    """About a million evenly spaced voxels of ``array`` (NumPy or torch, any shape), as a NumPy array."""
    if hasattr(array, "detach"):  # sampled where it lies (a GPU scan, permuted or not, is not copied whole), any dtype
        import torch  # here: the module is read without torch for NumPy volumes

        t = array.detach()
        picks = torch.arange(0, t.numel(), max(1, t.numel() // 1_000_000), device=t.device)
        sample = torch.take(t, picks).double().cpu().numpy()
    else:
        a = np.asarray(array)  # the voxels of its C-order flattening, gathered without it (a reshape copies a
        sample = a.flat[:: max(1, a.size // 1_000_000)]  # Fortran-ordered volume, as NIfTI reads, whole)
    return sample


def looks_like_label_map(array) -> int:
    """The number of distinct values of ``array`` (NumPy or torch, any shape) when it looks like a segmentation
    (at most :data:`LABEL_MAP_MAX_VALUES` integers in ``[0, 255]``, counted on about a million evenly spaced
    voxels), else 0."""
    return _label_map_values(_sample(array))


def _label_map_values(sample: np.ndarray) -> int:
    """:func:`looks_like_label_map` of a :func:`_sample` of a volume."""
    if sample.size == 0 or sample.min() < 0 or sample.max() > 255 or np.any(sample != np.round(sample)):
        return 0
    values = np.unique(sample).size
    return values if values <= LABEL_MAP_MAX_VALUES else 0


def looks_like_shifted_hu(array) -> bool:
    """Whether ``array`` (NumPy or torch, any shape) has no air (nothing below :data:`SHIFTED_HU_MIN`) but values
    above 1000: no CT in HU, but a CT stored as HU + 1024 without its rescale intercept, or another modality."""
    return _range_is_shifted_hu(*_value_range(array))


def _range_is_shifted_hu(lo: float, hi: float) -> bool:
    """:func:`looks_like_shifted_hu` of a volume's ``(min, max)``."""
    return lo >= SHIFTED_HU_MIN and hi > 1000


def looks_like_shifted_down_hu(array) -> bool:
    """Whether ``array`` (NumPy or torch, any shape) looks like a CT shifted down by 1024 HU (its rescale intercept
    applied twice: air at about -2000, tissue at about -1000): nothing above :data:`SHIFTED_DOWN_HU_MAX` (no soft
    tissue), or half its voxels below :data:`SHIFTED_DOWN_HU_MEDIAN` (far below air)."""
    return _shifted_down(_sample(array), _value_range(array)[1]) is not None


def _shifted_down(sample: np.ndarray, hi: float) -> float | None:
    """The median of ``sample`` (:func:`_sample` of a volume whose maximum is ``hi``) when the volume looks shifted
    down by 1024 HU (:func:`looks_like_shifted_down_hu`), else ``None``."""
    median = float(np.median(sample))
    return median if hi < SHIFTED_DOWN_HU_MAX or median < SHIFTED_DOWN_HU_MEDIAN else None


def warn_if_not_hu(array, spec: PreprocessingSpec, source: str) -> bool:
    """Log a warning naming ``source`` when a model whose pre-processing is a CT window in HU
    (:func:`window_expects_hu`) is given a volume that is not a CT in HU: linear attenuation in 1/mm
    (:func:`looks_like_attenuation`), which the window maps to an almost constant input, a label map
    (:func:`looks_like_label_map`: a segmentation listed as an image), or one without air (nothing below
    :data:`SHIFTED_HU_MIN`, values above 1000: a CT stored as HU + 1024, or another modality), or one shifted down by
    1024 HU (:func:`looks_like_shifted_down_hu`: its rescale intercept applied twice; under the window it is all
    background). Either way the output is meaningless.
    Nothing is refused: models of other modalities take such ranges.

    Args:
        array: the volume as read, before the window (NumPy or torch, any shape).
        spec: the model's pre-processing.
        source: the volume's file, as the warning names it.

    Returns:
        Whether it warned.
    """
    if not window_expects_hu(spec):
        return False
    a0, a1 = spec.hu_window
    kind, f = value_kind(array)
    lo, hi = f["lo"], f["hi"]
    if kind == "constant":
        logger.warning("%s is constant (every voxel %g): an empty or blanked volume?", source, lo)
    elif kind == "label_map":
        logger.warning(
            "%s looks like a label map (%d distinct integer values in %g .. %g), not a CT in HU: a segmentation "
            "listed as an image? The model's HU window [%g, %g] reads class indices as intensities", source,
            f["values"], lo, hi, a0, a1,
        )
    elif kind == "attenuation":
        logger.warning(
            "%s looks like linear attenuation in 1/mm (values %.4g .. %.4g), not a CT in HU: the model's HU window "
            "[%g, %g] maps it to an almost constant input, so its output is meaningless; convert it with "
            "HU = 1000 (mu / 0.0192 - 1)", source, lo, hi, a0, a1,
        )
    elif kind == "shifted_up":
        logger.warning(
            "%s has no value below %g but reaches %g: a CT in HU has air at -1000 (outside the body, in the lungs), so "
            "this is a crop without air (inside the skull, say), another modality, or a CT stored as HU + 1024 "
            "without its rescale intercept (air reads as tissue under the model's HU window [%g, %g]); for the "
            "last subtract 1024 (or set the DICOM RescaleIntercept / NIfTI scl_inter to -1024)", source, lo, hi, a0, a1,
        )  # fmt: skip
    elif kind == "shifted_down":
        logger.warning(
            "%s looks like a CT shifted down by 1024 HU (values %g .. %g, median %g; a CT has soft tissue at 0 .. 80 HU "
            "and air at -1000): its rescale intercept applied twice (HU - 1024)? The model's HU window [%g, %g] reads "
            "it all as air, so the output is all background; add 1024 (or correct the DICOM RescaleIntercept / NIfTI "
            "scl_inter)", source, lo, hi, f["median"], a0, a1,
        )  # fmt: skip
    return kind is not None


def value_kind(array) -> tuple[str | None, dict]:
    """What ``array``'s values (NumPy or torch, any shape) say it is when it is no CT in HU, the one judgement behind
    :func:`warn_if_not_hu` and ``medgmae-info --volume``, checked in this order with one pass for the range:
    ``"constant"``, ``"label_map"`` (:func:`looks_like_label_map`; before attenuation: a 0/1 mask is in its range
    too), ``"attenuation"`` (:func:`looks_like_attenuation`), ``"shifted_up"`` (nothing below :data:`SHIFTED_HU_MIN`,
    values above 1000) or ``"shifted_down"`` (:func:`looks_like_shifted_down_hu`); ``None`` otherwise.

    Returns:
        ``(kind, facts)``: ``facts`` holds ``lo`` and ``hi`` (the range), ``values`` (a label map's distinct values)
        and ``median`` (a shifted-down CT's).
    """
    lo, hi = _value_range(array)
    facts: dict = {"lo": lo, "hi": hi}
    if lo == hi:
        return "constant", facts
    sample = _sample(array)  # once, for the label map's values and the median
    values = _label_map_values(sample)
    if values:
        return "label_map", {**facts, "values": values}
    if range_is_attenuation(lo, hi):
        return "attenuation", facts
    if _range_is_shifted_hu(lo, hi):
        return "shifted_up", facts
    median = _shifted_down(sample, hi)
    return ("shifted_down", {**facts, "median": median}) if median is not None else (None, facts)
