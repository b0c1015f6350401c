"""The pre-processing contract: how a CT volume becomes a model input, recorded in every checkpoint.

A pre-trained model is only meaningful on data prepared the way it was trained on. :class:`PreprocessingSpec` is
that recipe, in one small record: the array orientation, the voxel spacing, the intensity window and its mapping,
the input (crop) size and the patch size. The pre-training bundle builds its deterministic transforms from it and
writes the values it used into ``model.pt`` and ``encoder.pt``; zero-shot inference (:mod:`medgmae.zeroshot`),
the reconstruction's MedGMAE initialisation and fine-tuning read them back from the checkpoint.

Frames and axis order (the convention of the whole toolkit):

* **world**: millimetres in the scanner frame, RAS+ as NIfTI and MONAI's readers report it (``+x`` left -> right,
  ``+y`` posterior -> anterior, ``+z`` inferior -> superior).
* **array**: a volume ``(I, J, K)`` with a 4x4 ``affine`` mapping index ``(i, j, k, 1)`` to world; MONAI's
  ``LoadImage`` returns arrays in this order (for NIfTI, the file's own index order).
* **model**: after :meth:`PreprocessingSpec.transforms` the array is in ``orientation`` (``"RAS"``: axis 0 runs
  left -> right, 1 posterior -> anterior, 2 inferior -> superior) at ``spacing`` mm, intensities windowed.

The defaults are MedGMAE's (paper, section 4.1): RAS, 1.5 mm isotropic, HU ``[-175, 250]`` -> ``[0, 1]`` clipped,
96^3 crops of 12^3 patches.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np


__all__ = [
    "PreprocessingSpec", "DEFAULT_SPEC", "default_spec_at", "describe_preprocessing", "model_preprocessing", "spec_with_overrides",
    "check_spec_setting", "check_spacing_override", "check_hu_window_override", "hu_range_bounds", "pixdim_spacing",
]  # fmt: skip

logger = logging.getLogger("medgmae")

_AXIS_LETTERS = ({"L", "R"}, {"P", "A"}, {"I", "S"})


def _triple(value: Any, name: str, cast=float) -> tuple:
    """A scalar (a NumPy one too) or a length-3 sequence as a 3-tuple of ``cast``; a string is refused (not read
    character by character)."""
    if _scalar(value):
        return (cast(value),) * 3
    try:
        if isinstance(value, (str, bytes)):
            raise TypeError
        vals = tuple(cast(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or three numbers, got {value!r}") from None
    if len(vals) != 3:
        raise ValueError(f"{name} must have three values (one per spatial axis), got {value!r}")
    return vals


def _scalar(value: Any) -> bool:
    """Whether ``value`` is one real number (``96``, ``1.5``, ``np.int64(96)`` from an array's shape; not a bool)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _pair(value: Any, name: str, expected: str) -> tuple[float, float]:
    """A ``(low, high)`` pair of numbers as two floats; ``ValueError`` naming ``name`` and ``expected`` for anything
    else (a single number, a string such as ``"-175,250"``, three numbers)."""
    try:
        if isinstance(value, (str, bytes)) or any(isinstance(v, (bool, np.bool_)) for v in value):
            raise TypeError
        vals = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        vals = ()
    if len(vals) != 2:
        raise ValueError(f"{name} must be a pair of numbers {expected}, got {value!r}")
    return vals


def _whole_triple(value: Any, name: str) -> tuple[int, int, int]:
    """A whole number or three (``96`` or ``96.0``, not ``96.7`` or a bool) as a 3-tuple of ints."""
    vals = _triple(value, name)
    parts = (value,) if _scalar(value) else tuple(value)
    if any(isinstance(v, (bool, np.bool_)) for v in parts) or not all(math.isfinite(v) and v == int(v) for v in vals):
        raise ValueError(f"{name} must be whole numbers of voxels, got {value!r}")
    return tuple(int(v) for v in vals)


@dataclass(frozen=True)
class PreprocessingSpec:
    """How a CT volume is turned into a model input; saved in checkpoints as :meth:`to_dict`.

    Args:
        orientation: axis codes of the model's array order (MONAI ``Orientationd``), e.g. ``"RAS"``.
        spacing: voxel size in mm along the three array axes after orientation.
        hu_window: ``(a_min, a_max)`` HU range mapped linearly to ``intensity_range``.
        intensity_range: ``(b_min, b_max)`` model intensities of ``a_min`` and ``a_max``.
        clip: clip the mapped intensities to ``intensity_range`` (a bool).
        input_size: model input (crop) size in voxels, whole numbers (``96.0`` is taken as ``96``).
        patch_size: ViT patch size in voxels, whole numbers.

    Raises:
        ValueError: any value is malformed (non-positive spacing, an empty or unbounded window, bad axis codes,
            a ``clip`` that is not a bool (such as the string ``"false"``), fractional sizes, sizes that are not
            multiples of the patch size).
    """

    orientation: str = "RAS"
    spacing: tuple[float, float, float] = (1.5, 1.5, 1.5)
    hu_window: tuple[float, float] = (-175.0, 250.0)
    intensity_range: tuple[float, float] = (0.0, 1.0)
    clip: bool = True
    input_size: tuple[int, int, int] = (96, 96, 96)
    patch_size: tuple[int, int, int] = (12, 12, 12)

    def __post_init__(self) -> None:
        orient = str(self.orientation).upper()
        if len(orient) != 3 or any(sum(c in letters for c in orient) != 1 for letters in _AXIS_LETTERS):
            raise ValueError(f"orientation must be three axis codes, one of L/R, P/A and I/S each (e.g. 'RAS'), got {self.orientation!r}")
        spacing = _triple(self.spacing, "spacing")
        if not all(math.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(f"spacing must be positive millimetres, got {self.spacing!r}")
        window = _pair(self.hu_window, "hu_window", "(a_min, a_max) in HU, such as (-175, 250)")
        rng = _pair(self.intensity_range, "intensity_range", "(b_min, b_max), such as (0, 1)")
        if not window[1] > window[0] or not math.isfinite(window[1] - window[0]):
            raise ValueError(f"hu_window must be (a_min, a_max) with a_max > a_min, both finite, got {self.hu_window!r}")
        if rng[1] == rng[0] or not math.isfinite(rng[1] - rng[0]):
            raise ValueError(f"intensity_range must be two different finite numbers (b_min, b_max), got {self.intensity_range!r}")
        if not isinstance(self.clip, (bool, np.bool_)):
            raise ValueError(f"clip must be True or False, got {self.clip!r}")
        size, patch = _whole_triple(self.input_size, "input_size"), _whole_triple(self.patch_size, "patch_size")
        if not all(p > 0 and s > 0 and s % p == 0 for s, p in zip(size, patch)):
            raise ValueError(f"input_size {size} must be positive multiples of patch_size {patch}")
        for name, value in (("orientation", orient), ("spacing", spacing), ("hu_window", window),
                            ("intensity_range", rng), ("clip", bool(self.clip)), ("input_size", size),
                            ("patch_size", patch)):  # fmt: skip
            object.__setattr__(self, name, value)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        """Plain lists / numbers / strings (JSON- and ``weights_only``-safe)."""
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping, source: str = "preprocessing spec") -> "PreprocessingSpec":
        """Rebuild from :meth:`to_dict` output; unknown keys are an error naming ``source``."""
        if not isinstance(d, Mapping):
            raise ValueError(f"{source}: the pre-processing record must be a dict, got {type(d).__name__}")
        known = {"orientation", "spacing", "hu_window", "intensity_range", "clip", "input_size", "patch_size"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{source}: unknown pre-processing keys {unknown} (known: {sorted(known)})")
        try:
            return cls(**dict(d))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: invalid pre-processing record ({e})") from e

    # ------------------------------------------------------------------ intensities
    def window(self, hu):
        """HU -> model intensities (tensor or array), clipped when :attr:`clip`."""
        (a0, a1), (b0, b1) = self.hu_window, self.intensity_range
        x = (hu - a0) / (a1 - a0) * (b1 - b0) + b0
        if self.clip:
            lo, hi = min(b0, b1), max(b0, b1)
            x = x.clip(lo, hi) if hasattr(x, "clip") else min(max(x, lo), hi)
        return x

    def unwindow(self, x):
        """Model intensities -> HU (the inverse of :meth:`window` inside the window)."""
        (a0, a1), (b0, b1) = self.hu_window, self.intensity_range
        return (x - b0) / (b1 - b0) * (a1 - a0) + a0

    @property
    def hu_per_unit(self) -> float:
        """HU per model-intensity unit (the window's slope)."""
        (a0, a1), (b0, b1) = self.hu_window, self.intensity_range
        return (a1 - a0) / (b1 - b0)

    # ------------------------------------------------------------------ MONAI transforms
    def transforms(self, keys: Sequence[str] = ("image",), label_keys: Sequence[str] = ()) -> list:
        """The deterministic spatial and intensity transforms of this spec, for already loaded channel-first
        MetaTensors: ``Orientationd`` -> ``Spacingd`` (bilinear for images, nearest for ``label_keys``; computed in
        float32) -> ``ScaleIntensityRanged`` on the image keys.

        ``Spacingd`` resamples in float32, not MONAI's float64 default: its output is float32 either way, and the
        float64 working copies of a clinical scan (and, through ``Invertd``, of every class channel of a
        segmentation inverted to the input's grid) took several times the memory for no visible difference.

        Args:
            keys: image keys (windowed, interpolated linearly); a string is one key, as MONAI's ``keys`` take it.
            label_keys: label keys (nearest-neighbour, not windowed); a string is one key.

        Returns:
            A list of MONAI transforms.
        """
        import torch
        from monai.transforms import Orientationd, ScaleIntensityRanged, Spacingd

        images, labels = ([k] if isinstance(k, str) else list(k) for k in (keys, label_keys))
        every = images + labels
        (a0, a1), (b0, b1) = self.hu_window, self.intensity_range
        return [
            Orientationd(keys=every, axcodes=self.orientation, labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            Spacingd(keys=every, pixdim=self.spacing, mode=["bilinear"] * len(images) + ["nearest"] * len(labels),
                     dtype=torch.float32),
            ScaleIntensityRanged(keys=images, a_min=a0, a_max=a1, b_min=b0, b_max=b1, clip=self.clip),
        ]


#: MedGMAE's pre-processing (the bundle's defaults).
DEFAULT_SPEC = PreprocessingSpec()


def check_spec_setting(**setting: Any) -> None:
    """A bundle's own pre-processing setting (``orientation=...`` or ``pixdim=...``), checked up front as the spec
    checks it, so that it is named with the other bad settings before anything runs.

    Raises:
        ValueError: the spec's message for the value (for ``pixdim``, :func:`pixdim_spacing`'s, naming ``pixdim``).
    """
    if "pixdim" in setting:
        setting["spacing"] = pixdim_spacing(setting.pop("pixdim"))
    PreprocessingSpec(**setting)


def check_spacing_override(value: Sequence[float] | float | None) -> None:
    """A bundle's ``pixdim`` override (``None``: the recorded spacing), checked up front as the spec would check it.

    Raises:
        ValueError: naming ``pixdim`` and the problem (not one or three positive finite millimetre values).
    """
    if value is not None:
        pixdim_spacing(value)


def check_hu_window_override(value: Sequence[float] | None) -> None:
    """A bundle's ``hu_range`` override (``None``: the recorded window), checked up front as the spec would check it.

    Raises:
        ValueError: naming ``hu_range`` and the problem (not two values, a bound that is not a finite number, or
            ``a_max`` not above ``a_min``).
    """
    if value is not None:
        hu_range_bounds(value)


def pixdim_spacing(value: Any, name: str = "pixdim") -> tuple[float, float, float]:
    """The ``(x, y, z)`` voxel spacing in mm of a spacing given as a setting, each problem named with the setting.

    Args:
        value: one number (isotropic) or three (numbers, or their text as a command line gives them).
        name: the setting, as the messages name it.

    Returns:
        The three spacings as floats.

    Raises:
        ValueError: ``value`` is not one or three values, or a value is not a positive finite number.
    """
    if _scalar(value):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number (mm) or 3 of them, got {value!r}")
        return (float(value),) * 3
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__len__") or len(value) != 3:
        raise ValueError(f"{name} must be a number or 3 numbers (mm), got {value!r}")
    spacing = [_number(v) for v in value]
    if not all(math.isfinite(number) and number > 0 for number in spacing):
        raise ValueError(f"{name} must be 3 positive finite numbers (mm), got {_shown(value)}")
    return spacing[0], spacing[1], spacing[2]


def hu_range_bounds(value: Any, name: str = "hu_range") -> tuple[float, float]:
    """``(a_min, a_max)`` of an HU window given as a setting, each problem named with the setting.

    Args:
        value: ``[a_min, a_max]`` (numbers, or their text as a command line gives them).
        name: the setting, as the messages name it.

    Returns:
        The two bounds as floats.

    Raises:
        ValueError: ``value`` is not two values, a bound is not a finite number (``nan``, ``inf``, text), or
            ``a_max`` is not above ``a_min``.
    """
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ValueError(f"{name} must be two numbers [a_min, a_max], got {value!r}")
    bounds = [_number(v) for v in value]
    for end, v, number in zip(("a_min", "a_max"), value, bounds):
        if not math.isfinite(number):
            raise ValueError(f"{name} bounds must be finite numbers, got {_shown(value)} ({end} is {str(v).strip()})")
    if not bounds[1] > bounds[0]:
        raise ValueError(f"{name} must be [a_min, a_max] with a_max above a_min, got {_shown(value)}")
    return bounds[0], bounds[1]


def _number(v: Any) -> float:
    """A setting's value as a float, NaN for what is not a number (``True``, text that does not parse, ``None``)."""
    try:
        return math.nan if isinstance(v, bool) else float(v)
    except (TypeError, ValueError):
        return math.nan


def _shown(value: Any) -> str:
    """A list setting as a message shows it, ``[1, 0, 1]``, each value as given (command-line text stripped)."""
    return "[" + ", ".join(str(v).strip() for v in value) + "]"


#: How to give a model file that records no pre-processing the one its training used (:func:`model_preprocessing`).
RECORD_ADVICE = ("record the pre-processing its training used with medgmae.checkpoint.record_preprocessing(path, out, "
                 "orientation=..., spacing=..., hu_window=...)")


def default_spec_at(size: Any, patch: Any) -> "PreprocessingSpec | None":
    """:data:`DEFAULT_SPEC` at a 3D network's own window (``img_size`` of three values) and ``patch_size`` (one or
    three), the spec a model that records none is read with (:func:`model_preprocessing`); ``None`` for other
    sizes (a 2D network's, or none given)."""
    if size is None or patch is None or isinstance(size, (str, int)) or len(tuple(size)) != 3:
        return None
    return dataclasses.replace(DEFAULT_SPEC, input_size=tuple(size), patch_size=patch)


def model_preprocessing(model: Any, source: str, advice: str = RECORD_ADVICE) -> "PreprocessingSpec":
    """The pre-processing a model records (its ``preprocessing``), or :data:`DEFAULT_SPEC` (at the model's own
    ``img_size`` and ``patch_size`` when it has them) with a warning naming ``source`` when it records none (a model file of an early version, or one rebuilt by hand): every consumer of a
    pre-trained model falls back through here, so the fallback and its warning are the same everywhere.

    Args:
        model: a model (or checkpoint) with a ``preprocessing`` attribute (``None``: nothing recorded).
        source: how the model is named in the warning (its file).
        advice: what the warning advises (a consumer's own override, e.g. the reconstruction's ``--model-spacing``).
    """
    spec = getattr(model, "preprocessing", None)
    if spec is not None:
        return spec
    d = default_spec_at(getattr(model, "img_size", None), getattr(model, "patch_size", None)) or DEFAULT_SPEC
    logger.warning(
        "%s records no pre-processing: the model sees the scan as the toolkit's default %s, %s mm voxels, HU window "
        "%s; if it was trained otherwise its output is wrong (%s)",
        source, d.orientation, "x".join(f"{v:g}" for v in d.spacing), list(d.hu_window), advice,
    )  # fmt: skip
    return d


def spec_with_overrides(
    recorded: PreprocessingSpec | None,
    spacing: Sequence[float] | float | None = None,
    hu_window: Sequence[float] | None = None,
    source: str = "the pre-trained encoder",
    trained_by: str = "pre-training",
    default: PreprocessingSpec | None = None,
) -> PreprocessingSpec:
    """A consumer's pre-processing: the checkpoint's recorded spec, with the spacing / HU window the user gave.

    A value given explicitly (not ``None``) wins; when it differs from the recorded one a warning (rank 0's under
    torchrun) names both, since
    the model then sees data prepared differently from its training.

    Args:
        recorded: the checkpoint's spec (``None``: nothing recorded, :data:`DEFAULT_SPEC` is the base).
        spacing: the user's spacing in mm (its ``pixdim`` setting, as a bad one is named: :func:`pixdim_spacing`),
            or ``None``.
        hu_window: the user's ``(a_min, a_max)`` (its ``hu_range`` setting, as a bad one is named:
            :func:`hu_range_bounds`), or ``None``.
        source: how the checkpoint is named in the warning.
        trained_by: the training that wrote the checkpoint, as the warning names it (``"fine-tuning"``).
        default: the base when nothing is recorded (e.g. :func:`model_preprocessing`'s, at the model's own
            window); :data:`DEFAULT_SPEC` when ``None``.

    Returns:
        The spec (``recorded`` or the default, with the overrides).

    Raises:
        ValueError: a malformed override (named as the ``hu_range`` or ``pixdim`` setting).
    """
    from medgmae.distributed import is_main_process  # here: this module stays free of torch

    base = recorded or default or DEFAULT_SPEC
    out_spacing = base.spacing if spacing is None else pixdim_spacing(spacing)
    out_window = base.hu_window if hu_window is None else hu_range_bounds(hu_window)
    if recorded is not None and is_main_process():  # a training run's processes all read the same checkpoint
        for name, mine, theirs in (("spacing", out_spacing, recorded.spacing), ("HU window", out_window, recorded.hu_window)):
            if not all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9) for a, b in zip(mine, theirs)):
                logger.warning(
                    "%s %s differs from the %s %s recorded in %s: the model will see data prepared differently "
                    "from its %s", name, list(mine), name, list(theirs), source, trained_by,
                )
    return dataclasses.replace(base, spacing=out_spacing, hu_window=out_window)


def describe_preprocessing(spec: PreprocessingSpec, origins: Mapping[str, str], size_name: str = "crop") -> str:
    """The one line that says what a consumer prepares data with and where each part came from (``origins``: the
    ``orientation``, ``spacing`` and ``hu_window``'s, e.g. ``recorded in .../encoder.pt``, ``given``, ``default``):
    ``pre-processing: orientation RAS (...), spacing [1.5, 1.5, 1.5] mm (...), HU window [-175.0, 250.0] (...),
    crop 96x96x96`` (``size_name``: what ``input_size`` is to the consumer)."""
    return (f"pre-processing: orientation {spec.orientation} ({origins['orientation']}), spacing {list(spec.spacing)} mm "
            f"({origins['spacing']}), HU window {list(spec.hu_window)} ({origins['hu_window']}), "
            f"{size_name} {'x'.join(map(str, spec.input_size))}")  # fmt: skip
