"""The scale the toolkit's models take their inputs on, and one wording for an input off it (an 8-bit image not
divided by 255, a CT in HU not windowed): :func:`medgmae.twod.images.to_model_input` refuses such an image, and the
models warn of such a batch, once per model (:func:`medgmae.networks.vit.check_model_input`: the masked
autoencoders' ``forward`` and ``predict_gaussians``, a GViT's call), which compute on it as given.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # read only: torch and the spec are the caller's
    from torch import Tensor

    from medgmae.preprocessing import PreprocessingSpec

__all__ = ["SCALE_SLACK", "CT_RANGE_HU", "IMAGE_SCALE_HOW", "VOLUME_SCALE_HOW", "model_input_range", "off_scale_problem",
           "warn_off_scale"]  # fmt: skip

logger = logging.getLogger("medgmae")

#: How far beyond its scale an input is taken, as a fraction of the scale's width (clipped by
#: :func:`~medgmae.twod.images.to_model_input`, as before): the overshoot of a bicubic resize or of noise added to a
#: 0-1 image; beyond it the input is on another scale (8-bit, HU).
SCALE_SLACK = 0.5
#: The CT values an unclipped pre-processing window may meet: the whole int16 range CT is stored in (-32768 HU
#: padding, metal up to 30000 HU in extended-range CT; not 12-bit CT's -1024 to 3071 HU, beyond which such a correctly
#: windowed scan would be warned of): such a model takes what the window maps them to (:func:`model_input_range`).
#: HU given unwindowed are still told (air at -1000 HU is far below what a window of a few hundred HU maps -32768 HU to).
CT_RANGE_HU = (-32768.0, 32767.0)
#: How a 2D image reaches the 0-1 scale (the end of the message).
IMAGE_SCALE_HOW = "medgmae.twod.images.read_image reads files onto it; a CT slice: its window, as medgmae-2d --window maps it"
#: How a 3D crop reaches its model's scale (the end of the message).
VOLUME_SCALE_HOW = ("a CT in HU: its window, model.preprocessing.window(hu); medgmae.zeroshot.zero_shot_gaussians "
                    "prepares a whole scan as the model file records")  # fmt: skip


def model_input_range(spec: PreprocessingSpec | None) -> tuple[float, float]:
    """The values a model takes: ``(0, 1)`` without a pre-processing record, else its ``intensity_range`` (low end
    first); for a window that does not clip, the range it maps :data:`CT_RANGE_HU` to."""
    if spec is None:
        return 0.0, 1.0
    ends = spec.intensity_range if spec.clip else [float(spec.window(v)) for v in CT_RANGE_HU]
    return float(min(ends)), float(max(ends))


def off_scale_problem(x: Tensor | None, lo: float, hi: float, what: str, how: str,
                      scale: tuple[float, float] = (0.0, 1.0)) -> str | None:  # fmt: skip
    """Why values from ``lo`` to ``hi`` are off ``scale`` (more than :data:`SCALE_SLACK` of its width beyond it):
    ``"<what> values must be on the 0-1 scale, got <lo> to <hi>[; an 8-bit image: divide by 255] (<how>)"``;
    ``None`` when they are on it.

    Args:
        x: the values (a tensor), read again only when off the scale, to tell an 8-bit image by its whole numbers;
            ``None`` to skip that.
        lo: their smallest value.
        hi: their largest value.
        what: what they are, the message's first word(s) (``"image"``).
        how: how to put them on the scale (:data:`IMAGE_SCALE_HOW`, :data:`VOLUME_SCALE_HOW`).
        scale: ``(low, high)`` (:func:`model_input_range`).
    """
    low, high = scale
    slack = SCALE_SLACK * (high - low)
    if low - slack <= lo and hi <= high + slack:
        return None
    whole = x is not None and lo >= 0 and 2 < hi <= 255 and bool((x == x.round()).all())
    name = "0-1 scale" if (low, high) == (0.0, 1.0) else f"model's {low:.3g} to {high:.3g} scale"
    hint = "; an 8-bit image: divide by 255" if whole else ""
    return f"{what} values must be on the {name}, got {lo:.4g} to {hi:.4g}{hint} ({how})"


def warn_off_scale(model: object, x: Tensor, lo: float, hi: float, how: str, scale: tuple[float, float] = (0.0, 1.0)) -> None:
    """Log :func:`off_scale_problem` of a model's input batch as a warning, once per ``model`` (a training loop
    over off-scale data is told once, not every step); the model computes on the batch as given.

    Args:
        model: the model given ``x`` (it keeps whether it warned).
        x: the batch.
        lo: its smallest value.
        hi: its largest value.
        how: how to put it on the scale.
        scale: the model's ``(low, high)``.
    """
    if getattr(model, "_warned_off_scale", False):
        return
    problem = off_scale_problem(x, lo, hi, "model input", how, scale)
    if problem:
        model._warned_off_scale = True
        logger.warning("%s; the model computes on them as given (said once per model)", problem)
