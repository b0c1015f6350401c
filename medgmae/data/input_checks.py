"""Warnings about volumes that load fine but will not give the model what it expects; the data pass unchanged.

Both transforms sit where the problem becomes visible: :class:`WarnIfNotHUd` (attenuation in 1/mm, or a label
map listed as an image; training and inference pipelines) after loading, before the HU window, each time a volume
is loaded (with a disk cache, once); :class:`WarnIfPaddedd` (training, and segmentation's inference) after the
foreground crop, before ``SpatialPadd`` (or the sliding window's own padding), once per file and process. Each names the file.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform

from medgmae.preprocessing import PreprocessingSpec
from medgmae.volume_units import warn_if_not_hu

__all__ = ["WarnIfNotHUd", "WarnIfPaddedd", "padding_share"]

logger = logging.getLogger("medgmae.data")


def _source(image, key: str) -> str:
    return str(getattr(image, "meta", {}).get("filename_or_obj", key))


class WarnIfNotHUd(MapTransform):
    """Warn, naming the file, when a loaded image looks like linear attenuation in 1/mm or like a label map although
    ``spec``'s window is a CT window in HU (:func:`~medgmae.volume_units.warn_if_not_hu`); the data pass unchanged.

    Args:
        keys: the image keys, after loading and before the window.
        spec: the model's pre-processing.
    """

    def __init__(self, keys: KeysCollection, spec: PreprocessingSpec) -> None:
        super().__init__(keys)
        self.spec = spec

    def __call__(self, data: dict) -> dict:
        for key in self.key_iterator(data):
            warn_if_not_hu(data[key], self.spec, _source(data[key], key))
        return data


def padding_share(shape: Sequence[int], window: Sequence[int]) -> float:
    """The share of a ``window`` (a crop, or zero-shot inference's window) that padding fills when it holds a volume
    of ``shape`` (both in voxels, per axis), in ``[0, 1)``."""
    return 1.0 - float(np.prod([min(s, w) / w for s, w in zip(shape, window)]))


class WarnIfPaddedd(MapTransform):
    """Warn, naming the file, when an image is so much smaller than ``spatial_size`` that the following
    ``SpatialPadd`` makes more than ``max_padding`` of every crop of it padding (zeros: the window's lower end,
    air), which the model learns as anatomy. Usually a volume of another field of view or a too-coarse ``pixdim``.
    A few voxels short on one axis (a slim patient's front-to-back extent) stays below the threshold.

    Args:
        keys: the image keys, after the spec's transforms and the foreground crop (channel-first ``(1, X, Y, Z)``).
        spatial_size: the crop size in voxels, ``(X, Y, Z)``.
        pixdim: the voxel size in mm the image was resampled to (named in the message; ``None``: not named).
        max_padding: the share of a crop that may be padding without a warning, in ``[0, 1)``.
        window: what the message calls the region of ``spatial_size`` (``"crop"`` in training; inference's
            ``"sliding window"``).
        spec: the pre-processing before the foreground crop, whose window's floor (``spec.unwindow(0.0)``, the HU
            its window maps to 0: the foreground crop keeps the voxels above it) the message names when the crop is
            empty (``None``: not named).
    """

    _warned: set = set()

    def __init__(
        self, keys: KeysCollection, spatial_size: Sequence[int], pixdim: Sequence[float] | None = None,
        max_padding: float = 0.25, window: str = "crop", spec: PreprocessingSpec | None = None,
    ) -> None:
        super().__init__(keys)
        self.floor = None if spec is None else float(spec.unwindow(0.0))
        self.window = str(window)
        if not 0.0 <= float(max_padding) < 1.0:
            raise ValueError(f"max_padding must be in [0, 1), got {max_padding}")
        self.max_padding = float(max_padding)
        self.spatial_size = tuple(int(s) for s in spatial_size)
        if len(self.spatial_size) != 3 or min(self.spatial_size) < 1:
            raise ValueError(f"spatial_size must be three positive sizes, got {spatial_size}")
        self.pixdim = None if pixdim is None else tuple(float(p) for p in pixdim)

    def __call__(self, data: dict) -> dict:
        for key in self.key_iterator(data):
            shape = tuple(int(s) for s in data[key].shape[1:])
            source = _source(data[key], key)
            padding = padding_share(shape, self.spatial_size)
            if padding <= self.max_padding or source in WarnIfPaddedd._warned:
                continue
            WarnIfPaddedd._warned.add(source)
            if min(shape) == 0:
                self._warn_empty(source)
                continue
            at = "" if self.pixdim is None else f" at {'x'.join(f'{p:g}' for p in self.pixdim)} mm"
            advice = ("use a smaller pixdim (for a pre-trained encoder, one pre-trained at that spacing: a spacing other "
                      "than its own shows it data prepared otherwise)" if self.window == "crop" else
                      "the model was trained on this window at this spacing: expect a poorer result")  # fmt: skip
            logger.warning(
                "%s is %s voxels%s after resampling and the foreground crop, smaller than the %s %s: %.0f %% of it is "
                "padding with the window's lower end (air), which the model sees as part of the volume; check its field "
                "of view, or %s", source, "x".join(map(str, shape)), at, "x".join(map(str, self.spatial_size)), self.window,
                100 * padding, advice,
            )  # fmt: skip
        return data

    def _warn_empty(self, source: str) -> None:
        """The warning about an image whose foreground crop is empty: no voxel above the window's floor."""
        floor = "" if self.floor is None else f" ({self.floor:g} in the image's values)"
        logger.warning(
            "%s has no voxel above the intensity window's floor%s after resampling, so the foreground crop (the box of "
            "the voxels above it) is empty: the model sees only padding and its output is all background; check the "
            "image's values (a CT shifted down by 1024 HU, its rescale intercept applied twice?) and the window",
            source, floor,
        )
