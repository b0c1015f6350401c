"""Dice in the label files' own voxels (``evaluate.json --native_space true``), as nnU-Net and most challenges
report it, beside the default Dice on the pre-processed grid (MONAI's BTCV recipe).

The prediction goes back to the image's original grid the way segmentation does it (``inference.json``): softmax,
``Invertd`` of the pre-processing (orientation, spacing, foreground crop) with bilinear interpolation of the
probabilities, then argmax, a few class channels at a time (:class:`~medgmae.finetune.invert.InvertedArgmaxd`,
the same labels). The label is the file itself, read again with :func:`~medgmae.data.reader.read_volume`
and only re-indexed (flips and axis permutations, no interpolation) when it is stored in another axis order than
its image, which the pre-check accepts. Both are then one-hot, as :class:`~medgmae.finetune.evaluate.
SegmentationReport` takes them.

Axis order and world frame: the inverted prediction is ``(C, I, J, K)`` in the image file's index order with the
image's RAS affine (``LoadVolumed``'s convention); the label is brought to that order.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Activationsd, AsDiscreted, Compose, MapTransform

from medgmae.data.grid import same_grid_problem
from medgmae.data.reader import read_volume
from medgmae.finetune.invert import InvertedArgmaxd

__all__ = ["NativeLabeld", "evaluation_postprocessing"]


def _reindexed(array: np.ndarray, affine: np.ndarray, target_affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``array`` flipped and permuted into the axis order of ``target_affine`` (nibabel's orientation tools), and
    its affine after that re-indexing."""
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

    change = ornt_transform(io_orientation(affine), io_orientation(target_affine))
    return apply_orientation(array, change), affine @ inv_ornt_aff(change, array.shape)


class NativeLabeld(MapTransform):
    """Replace a pre-processed label by its file's own voxels, on the grid of the inverted ``ref_key`` prediction.

    Args:
        keys: the label keys (MetaTensors whose ``filename_or_obj`` is the label file).
        ref_key: the prediction already inverted to the image's original grid (``(C, I, J, K)``, its affine).

    Raises:
        ValueError: the label file does not lie on the image's grid (up to axis order), naming both files.
    """

    def __init__(self, keys: KeysCollection, ref_key: str = "pred") -> None:
        super().__init__(keys)
        self.ref_key = ref_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        ref = d[self.ref_key]
        ref_affine, ref_shape = np.asarray(ref.affine, dtype=np.float64), tuple(ref.shape[1:])
        image = str(ref.meta.get("filename_or_obj", "the image"))
        for key in self.key_iterator(d):
            vol = read_volume(d[key].meta["filename_or_obj"], label=True)
            array, affine = _reindexed(vol.array, vol.affine, ref_affine)
            problem = same_grid_problem(f"label {vol.path}", array.shape, affine, f"image {image}", ref_shape, ref_affine)
            if problem:
                raise ValueError(problem)
            d[key] = MetaTensor(torch.from_numpy(np.ascontiguousarray(array))[None], affine=torch.from_numpy(affine),
                                meta={"filename_or_obj": str(vol.path)})  # fmt: skip
        return d


def evaluation_postprocessing(num_classes: int, preprocessing: Compose | None = None, native_space: bool = False) -> Compose:
    """The evaluator's post-processing: one-hot ``pred`` (argmax) and ``label`` for Dice.

    Args:
        num_classes: classes, background included.
        preprocessing: the evaluation's pre-processing (inverted in native space).
        native_space: Dice in the label files' voxels (see the module docstring); ``False``: on the pre-processed
            grid.

    Returns:
        A MONAI ``Compose``.
    """
    onehot = AsDiscreted(keys=["pred", "label"], argmax=[not native_space, False], to_onehot=int(num_classes))
    if not native_space:
        return Compose([onehot])
    if preprocessing is None:
        raise ValueError("native_space needs the pre-processing to invert")
    return Compose([
        Activationsd(keys="pred", softmax=True),
        InvertedArgmaxd(keys="pred", transform=preprocessing, orig_keys="image"),
        NativeLabeld(keys="label", ref_key="pred"),
        onehot,
    ])  # fmt: skip
