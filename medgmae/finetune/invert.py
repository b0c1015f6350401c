"""Class probabilities inverted to the input's grid and reduced to labels a few channels at a time.

The bundle's segmentation recipe is softmax, :class:`monai.transforms.Invertd` of the pre-processing (linear
interpolation of every class channel back to the input's grid), then argmax. Run as written, the inversion holds
every class's probability map at the input's full grid at once, plus the resampler's working copies: for 18
classes on a 512 x 512 x 300 scan, 5.7 GB of float32 maps before any working copy (measured on a smaller case:
``bench/seg_memory.py`` in ``bench/RESULTS.md``). :class:`InvertedArgmaxd` gives the same
labels with the maps of only ``channels_per_step`` classes at a time: MONAI's ``Invertd`` (not a resampler of its
own) inverts each group of channels, and a running maximum and its class index replace the argmax. The inversion
resamples every channel on its own, so grouping the channels changes no value (tested against the all-channel
MONAI recipe); ties go to the lowest class index, as ``torch.argmax`` gives them, and a NaN probability wins, as in
``torch.argmax``.

Each step also pays ``Invertd``'s own working set at the input's grid (the resampling grid: about three float32
maps' worth for the coordinates, and as much again in scratch), so a step of a few classes costs little more than a
step of one, and fewer steps are faster: the bundle inverts four at a time.

MONAI has no transform that inverts and reduces channels in steps (``AsDiscreted`` needs every channel at once),
hence this one.
"""

from __future__ import annotations

import logging
from typing import Mapping

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Invertd, MapTransform
from monai.utils import ensure_tuple_rep

from medgmae.terminal import ProgressLines
from medgmae.whole_numbers import positive_count

__all__ = ["InvertedArgmaxd"]

logger = logging.getLogger(__name__)


def _merge_group(best: torch.Tensor | None, label: torch.Tensor | None, group: torch.Tensor, first: int):
    """Fold the inverted probabilities of classes ``first, first + 1, ...`` into the running maximum and label.

    Args:
        best: ``(1, *spatial)`` largest probability so far (``None`` before the first group).
        label: ``(1, *spatial)`` float32 class index of ``best`` (exact up to 2^24 classes).
        group: ``(c, *spatial)`` this group's inverted probabilities.
        first: class index of ``group[0]``.

    Returns:
        The updated ``(best, label)``; an earlier class keeps a tie, a NaN replaces any number.
    """
    top, index = torch.max(group.as_tensor() if isinstance(group, MetaTensor) else group, dim=0, keepdim=True)
    index = index.to(torch.float32) + first
    if best is None:
        return top, index
    better = (top > best) | (top.isnan() & ~best.isnan())
    return torch.where(better, top, best), torch.where(better, index, label)


class InvertedArgmaxd(MapTransform):
    """``Invertd`` (linear) then argmax over channels, ``channels_per_step`` channels inverted at a time.

    The result equals ``Compose([Invertd(keys, transform, orig_keys, nearest_interp=False, to_tensor=True),
    AsDiscreted(keys, argmax=True)])``: a float32 ``(1, *input_spatial)`` label map with the inverted tensor's meta
    data (the input's affine), values and dtype as ``AsDiscreted`` gives them.

    Args:
        keys: the probability keys, ``(C, *spatial)`` MetaTensors on the pre-processed grid.
        transform: the pre-processing to invert (as for ``Invertd``).
        orig_keys: the pre-processed key whose applied operations are inverted (as for ``Invertd``).
        channels_per_step: classes inverted together; memory grows with it, the result does not change.
    """

    def __init__(self, keys: KeysCollection, transform, orig_keys: KeysCollection, channels_per_step: int = 4) -> None:
        super().__init__(keys)
        self.channels_per_step = positive_count(channels_per_step, "channels_per_step")
        origs = ensure_tuple_rep(orig_keys, len(self.keys))
        self.inverters = {key: Invertd(keys=key, transform=transform, orig_keys=orig, nearest_interp=False, to_tensor=True)
                          for key, orig in zip(self.keys, origs)}  # fmt: skip

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            probs, best, label = d[key], None, None
            meta = MetaTensor(torch.empty(0))
            starts = range(0, probs.shape[0], self.channels_per_step)
            # no bar shows the inversion: a line a minute of a long one (a full-size scan of many classes)
            lines = ProgressLines("inverting to the input's grid", len(starts), "class groups", logger.info, bar=False)
            for step, first in enumerate(starts, 1):
                part = dict(d)
                part[key] = probs[first : first + self.channels_per_step]
                group = self.inverters[key](part)[key]
                del part
                best, label = _merge_group(best, label, group, first)
                if first == 0:
                    meta.copy_meta_from(group)  # the input's affine and meta data, as Invertd leaves them
                del group
                lines.update(step)
            del best
            d[key] = MetaTensor(label)
            d[key].copy_meta_from(meta)
        return d
