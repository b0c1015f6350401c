"""The MedGMAE paper's pre-training augmentation, applied to each crop when the pre-training bundle's ``augment``
is true.

The paper lists flips (probability 0.5), rotation (0.3), intensity scaling (0.1) and intensity shifting (0.1); the
released code (``windrise/MedGMAE``, ``dataloader/med_datasets.py``) has them as a commented-out block of MONAI
transforms, which this follows: a flip on each spatial axis with probability 0.5 each, a rotation by 90, 180 or
270 degrees (equally likely) in the axial plane with probability 0.3, the intensities
scaled by ``1 + f``, ``f`` uniform in ``[-0.1, 0.1]``, with probability 0.1, and shifted by an offset uniform in
``[-0.1, 0.1]`` with probability 0.1. The released training runs none of it, and neither does the bundle by
default (``augment`` false), so that a run matches the released one; ``--augment true`` gives the paper's.

Arrays are MONAI's channel-first ``(C, ...)`` in the model's ``orientation`` (:mod:`medgmae.preprocessing`; the
default RAS gives ``(C, x, y, z)``): the turn is in the plane of the axes coded L/R and P/A, the axial plane of any
orientation (spatial axes 0 and 1 for RAS, the released code's). The intensities are the window-mapped values (0 to
1 over the HU window), so a shift of 0.1 is a tenth of the window; a negative shift takes air below 0, where the
decoder's intensities (a sigmoid's) cannot follow, as in the released code.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.transforms import MapTransform, RandFlipd, RandRotate90d, RandScaleIntensityd, RandShiftIntensityd

__all__ = ["PAPER_AUGMENTATION", "axial_axes", "pretraining_augmentation"]

#: The probabilities and ranges of the paper's augmentation (module docstring).
PAPER_AUGMENTATION = {"flip": 0.5, "rotate90": 0.3, "scale": 0.1, "scale_range": 0.1, "shift": 0.1, "shift_range": 0.1}


def axial_axes(orientation: str) -> tuple[int, int]:
    """The spatial axes of the axial plane in an array of ``orientation``: those coded L/R and P/A.

    Args:
        orientation: three axis codes, one of L/R, P/A and I/S each (``"RAS"``, ``"LPS"``, ``"SAR"``...).

    Returns:
        The two axes in increasing order, e.g. ``(0, 1)`` for RAS, ``(1, 2)`` for SAR.

    Raises:
        ValueError: ``orientation`` is not three such codes.
    """
    codes = str(orientation).upper()
    groups = [next((i for i, pair in enumerate(("LR", "PA", "IS")) if c in pair), None) for c in codes]
    if len(codes) != 3 or sorted(g for g in groups if g is not None) != [0, 1, 2]:
        raise ValueError(f"orientation must be three axis codes, one of L/R, P/A and I/S each, got {orientation!r}")
    return tuple(sorted(groups.index(g) for g in (0, 1)))  # type: ignore[return-value]


def pretraining_augmentation(enabled: bool, orientation: str = "RAS", keys: Sequence[str] = ("image",)) -> list[MapTransform]:
    """The paper's augmentation (module docstring) as MONAI transforms, to follow the random crop.

    Args:
        enabled: the bundle's ``augment`` setting; ``False`` gives no transforms.
        orientation: the arrays' axis codes (the model's pre-processing), which place the axial plane of the turn.
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
        RandRotate90d(keys=keys, prob=p["rotate90"], max_k=3, spatial_axes=axial_axes(orientation)),
        RandScaleIntensityd(keys=keys[0], factors=p["scale_range"], prob=p["scale"]),
        RandShiftIntensityd(keys=keys[0], offsets=p["shift_range"], prob=p["shift"]),
    ]
