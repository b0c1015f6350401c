"""The MedGMAE paper's pre-training augmentation, applied to each crop when the pre-training bundle's ``augment``
is true.

The paper lists flips (probability 0.5), rotation (0.3), intensity scaling (0.1) and intensity shifting (0.1); the
released code (``windrise/MedGMAE``, ``dataloader/med_datasets.py``) has them as a commented-out block of MONAI
transforms, which this follows: a flip on each spatial axis with probability 0.5 each, a rotation by 90, 180 or
270 degrees (equally likely) in the plane of the first two spatial axes with probability 0.3, the intensities
scaled by ``1 + f``, ``f`` uniform in ``[-0.1, 0.1]``, with probability 0.1, and shifted by an offset uniform in
``[-0.1, 0.1]`` with probability 0.1. The released training runs none of it, and neither does the bundle by
default (``augment`` false), so that a run matches the released one; ``--augment true`` gives the paper's.

Arrays are MONAI's channel-first ``(C, x, y, z)`` after the pipeline's orientation to RAS
(:mod:`medgmae.preprocessing`): the rotation turns the axial ``(x, y)`` plane, and the intensities are the
window-mapped values (0 to 1 over the HU window), so a shift of 0.1 is a tenth of the window.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.transforms import MapTransform, RandFlipd, RandRotate90d, RandScaleIntensityd, RandShiftIntensityd

__all__ = ["PAPER_AUGMENTATION", "pretraining_augmentation"]

#: The probabilities and ranges of the paper's augmentation (module docstring).
PAPER_AUGMENTATION = {"flip": 0.5, "rotate90": 0.3, "scale": 0.1, "scale_range": 0.1, "shift": 0.1, "shift_range": 0.1}


def pretraining_augmentation(enabled: bool, keys: Sequence[str] = ("image",)) -> list[MapTransform]:
    """The paper's augmentation (module docstring) as MONAI transforms, to follow the random crop.

    Args:
        enabled: the bundle's ``augment`` setting; ``False`` gives no transforms.
        keys: the keys of the crop's arrays; the intensity transforms change the first only.

    Returns:
        The transforms, in the order the released code lists them: three flips, the rotation, the intensity
        scaling and shift.
    """
    if not enabled:
        return []
    keys, p = list(keys), PAPER_AUGMENTATION
    if not keys:
        raise ValueError("pretraining_augmentation needs at least one key")
    return [
        *(RandFlipd(keys=keys, prob=p["flip"], spatial_axis=axis) for axis in range(3)),
        RandRotate90d(keys=keys, prob=p["rotate90"], max_k=3, spatial_axes=(0, 1)),
        RandScaleIntensityd(keys=keys[0], factors=p["scale_range"], prob=p["scale"]),
        RandShiftIntensityd(keys=keys[0], offsets=p["shift_range"], prob=p["shift"]),
    ]
