"""The GViT paper's augmentation of training images ("hflip, crop [0.5, 1]", its Table A.1), the bundle's
``augment`` setting.

Each training image is mirrored left-right with probability 0.5 (MONAI ``RandFlipd`` on the width axis) and
cut to a random crop that is resized back to the model's image size (:class:`RandResizedCropd`): the crop's area
is a fraction of the image's drawn uniformly from ``[0.5, 1]`` and its aspect ratio (width / height)
log-uniformly from ``[3/4, 4/3]``. The paper names the area range only; the aspect range is torchvision's
``RandomResizedCrop`` default, the transform such "crop [scale]" recipes (MAE, DeiT) use. Validation, evaluation
and inference images are never augmented.

For medical images a left-right flip can be wrong: left and right differ in anatomy (the patient's right is on
the image's left), so a flipped slice shows a body that does not exist, and a task whose label depends on the
side (laterality) is corrupted by it. The bundle's default follows the paper; ``--augment false`` turns both off.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import EnsureTyped, MapTransform, RandFlipd, RandomizableTransform, Resize, SpatialCrop

__all__ = ["CROP_AREA", "CROP_RATIO", "RandResizedCropd", "gvit_augmentation"]

#: The crop's area as a fraction of the image's (the paper's "crop [0.5, 1]").
CROP_AREA = (0.5, 1.0)
#: The crop's aspect ratio, width / height (torchvision's ``RandomResizedCrop`` default; the paper names none).
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)


class RandResizedCropd(RandomizableTransform, MapTransform):
    """torchvision's ``RandomResizedCrop`` as a MONAI dictionary transform of ``(C, H, W)`` arrays.

    MONAI has no transform that draws a crop this way: ``RandScaleCropd`` and ``RandSpatialCropd`` draw each side's
    length on its own, which gives neither a uniform area fraction in ``area`` nor an aspect ratio bounded by
    ``ratio``. The crop is drawn here (from the transform's own ``R``, so that a checkpoint saves and restores it
    with MONAI's other random transforms) and made by MONAI's ``SpatialCrop`` and ``Resize`` (bilinear).

    As torchvision does, ten draws are tried for a crop that fits in the image; when none fits, the centre crop of
    the whole image with the aspect ratio clamped to ``ratio`` is used.

    Args:
        keys: the keys of the arrays to crop.
        spatial_size: ``(H, W)`` the crop is resized to.
        area: range of the crop's area as a fraction of the image's.
        ratio: range of the crop's width / height, drawn log-uniformly.
        prob: probability of cropping an image (1: every image).
        allow_missing_keys: as MONAI's.
    """

    def __init__(
        self,
        keys,
        spatial_size: Sequence[int],
        area: Sequence[float] = CROP_AREA,
        ratio: Sequence[float] = CROP_RATIO,
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if not 0.0 < float(area[0]) <= float(area[1]) <= 1.0:
            raise ValueError(f"area must be a range within (0, 1], got {tuple(area)}")
        if not 0.0 < float(ratio[0]) <= float(ratio[1]):
            raise ValueError(f"ratio must be a range of positive numbers, got {tuple(ratio)}")
        self.area, self.ratio = (float(area[0]), float(area[1])), (float(ratio[0]), float(ratio[1]))
        self.resize = Resize(spatial_size=tuple(int(s) for s in spatial_size), mode="bilinear", align_corners=False)
        self._box: tuple[int, int, int, int] | None = None

    def crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """Draw a crop ``(top, left, h, w)`` of a ``height`` x ``width`` image (class docstring)."""
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = height * width * self.R.uniform(*self.area)
            aspect = math.exp(self.R.uniform(*log_ratio))
            w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return int(self.R.randint(0, height - h + 1)), int(self.R.randint(0, width - w + 1)), h, w
        aspect = width / height
        if aspect < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif aspect > self.ratio[1]:
            h, w = height, int(round(height * self.ratio[1]))
        else:
            h, w = height, width
        return (height - h) // 2, (width - w) // 2, h, w

    def randomize(self, data: Sequence[int]) -> None:
        """Decide whether to crop, and draw the crop of an image of spatial shape ``data`` (``(H, W)``)."""
        super().randomize(None)
        self._box = self.crop_box(int(data[0]), int(data[1])) if self._do_transform else None

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        first = self.first_key(d)
        if first == []:
            return d
        self.randomize(np.shape(d[first])[1:])
        if self._box is None:
            return d
        top, left, h, w = self._box
        crop = SpatialCrop(roi_start=(top, left), roi_end=(top + h, left + w))
        for key in self.key_iterator(d):
            d[key] = self.resize(crop(d[key]))
        return d


def gvit_augmentation(enabled: bool, image_size: Sequence[int], keys: Sequence[str] = ("image",)) -> list:
    """The paper's augmentation (module docstring) as MONAI transforms, to follow the image's loading.

    Args:
        enabled: the bundle's ``augment`` setting; ``False`` gives no transforms.
        image_size: ``(H, W)`` of the model's images, the size a crop is resized to.
        keys: the keys of the image arrays.

    Returns:
        ``[RandFlipd (width axis, probability 0.5), RandResizedCropd, EnsureTyped]`` (the last gives plain float32
        tensors, as the images are without augmentation), or ``[]``.
    """
    if not enabled:
        return []
    keys = list(keys)
    return [RandFlipd(keys=keys, prob=0.5, spatial_axis=1), RandResizedCropd(keys=keys, spatial_size=image_size),
            EnsureTyped(keys=keys, dtype=torch.float32, track_meta=False)]  # fmt: skip
