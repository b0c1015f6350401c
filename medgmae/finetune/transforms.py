"""The MONAI transforms of UNETR fine-tuning, built from the run's pre-processing spec.

Training, validation and inference load a volume, apply the spec (orientation, spacing, HU window) and crop to the
foreground (:data:`FOREGROUND_CROP`); training then takes 1:1 positive / negative crops of the spec's input size and
augments them as MONAI's BTCV references do.
"""

from __future__ import annotations

from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureTyped,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SpatialPadd,
)

from medgmae.data.input_checks import WarnIfNotHUd, WarnIfPaddedd
from medgmae.data.reader import LoadVolumed
from medgmae.preprocessing import PreprocessingSpec

__all__ = ["train_transforms", "val_transforms", "inference_transforms"]

#: the crop after the spec's transforms (to the box of voxels above 0 after the window), for every phase; also
#: recorded in an exported model.ts (medgmae.finetune.export)
FOREGROUND_CROP = {"source_key": "image", "allow_smaller": True}


def _load_and_resample(keys, spec: PreprocessingSpec, warn_not_hu: bool = True) -> list:
    labels = [k for k in keys if k == "label"]
    return [
        LoadVolumed(keys=keys, label_keys=labels),
        *([WarnIfNotHUd(keys="image", spec=spec)] if warn_not_hu else []),
        *spec.transforms(keys=["image"], label_keys=labels),
        CropForegroundd(keys=keys, **FOREGROUND_CROP),
    ]


def train_transforms(spec: PreprocessingSpec, num_samples: int = 4, warn_padding: bool = True) -> Compose:
    """MONAI BTCV training pipeline: load, ``spec`` (orientation, spacing, HU window), foreground crop, 1:1 pos/neg
    crops of ``spec.input_size``, flips on each axis, 90-degree rotations, intensity scale and shift.
    ``warn_padding``: warn about volumes mostly padded in every crop (:class:`WarnIfPaddedd`; off for the small
    generated phantoms of a demonstration run, whose size the user did not choose)."""
    roi = list(spec.input_size)
    keys = ["image", "label"]
    padding = [WarnIfPaddedd(keys="image", spatial_size=roi, pixdim=spec.spacing, spec=spec)] if warn_padding else []
    return Compose(
        _load_and_resample(keys, spec)
        + padding
        + [
            SpatialPadd(keys=keys, spatial_size=roi),
            RandCropByPosNegLabeld(
                keys=keys, label_key="label", spatial_size=roi, pos=1, neg=1, num_samples=num_samples,
                image_key="image", image_threshold=0,
            ),
            RandFlipd(keys=keys, prob=0.1, spatial_axis=0),
            RandFlipd(keys=keys, prob=0.1, spatial_axis=1),
            RandFlipd(keys=keys, prob=0.1, spatial_axis=2),
            RandRotate90d(keys=keys, prob=0.1, max_k=3),
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.1),
            RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
            EnsureTyped(keys=keys, track_meta=False),
        ]
    )


def val_transforms(spec: PreprocessingSpec) -> Compose:
    """Deterministic part of :func:`train_transforms` (whole volumes, for sliding-window validation)."""
    keys = ["image", "label"]
    return Compose(_load_and_resample(keys, spec) + [EnsureTyped(keys=keys)])


def inference_transforms(spec: PreprocessingSpec, warn_not_hu: bool = True, warn_padding: bool = True) -> Compose:
    """Image-only pre-processing, invertible by :class:`monai.transforms.Invertd` back to the original space; a
    scan much smaller than the model's window is warned about (:class:`WarnIfPaddedd`).

    Args:
        spec: the model's pre-processing.
        warn_not_hu: warn about an image that is no CT in HU for a model of HU (:class:`WarnIfNotHUd`: attenuation
            in 1/mm, a label map...) as it is loaded; ``False`` where the pre-check warned already
            (:func:`~medgmae.finetune.segment_inputs.inference_cases` given the spec), so each file is named once.
        warn_padding: warn about a scan much smaller than the model's window (:class:`WarnIfPaddedd`); ``False``
            for the run's own cases (training warned about the user's, and generated phantoms are small by design).

    Returns:
        The transforms.
    """
    if not isinstance(warn_not_hu, bool) or not isinstance(warn_padding, bool):
        raise ValueError(f"inference_transforms: warn_not_hu and warn_padding must be true or false, got {warn_not_hu!r}, "
                         f"{warn_padding!r}")
    padded = [WarnIfPaddedd(keys="image", spatial_size=spec.input_size, pixdim=spec.spacing, window="sliding window",
                            spec=spec)]
    return Compose(_load_and_resample(["image"], spec, warn_not_hu) + (padded if warn_padding else [])
                   + [EnsureTyped(keys="image")])
