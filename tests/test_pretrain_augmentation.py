"""The paper's pre-training augmentation (:mod:`medgmae.data.augmentation`, the bundle's ``augment``): over many
draws, each outcome comes as often as the paper's probabilities say.

The reference is analytic: flips on each axis with probability 0.5, then a turn of the axial plane by 90, 180 or
270 degrees with probability 0.3 (each 0.1), give 16 distinct arrangements of a cube's voxels (the square's 8
symmetries, each with and without the z flip), whose probabilities are summed here over the 32 combinations with
NumPy's own flips and turns; the intensities are scaled with probability 0.1 by a factor within 1 +- 0.1 and shifted
with probability 0.1 by an offset within +-0.1. Each draw is identified from its output alone.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from monai.transforms import Compose

from medgmae.data.augmentation import pretraining_augmentation

N = 4  # the test cube's edge: values all distinct, so every arrangement is told apart by the voxels' order


def _arrangements() -> tuple[list[np.ndarray], np.ndarray]:
    """The distinct arrangements of the cube's voxel indices ``(C, x, y, z)`` and their analytic probabilities."""
    index = np.arange(N**3).reshape(1, N, N, N)
    found: dict[bytes, float] = {}
    arrays: dict[bytes, np.ndarray] = {}
    for flips in itertools.product((False, True), repeat=3):
        a = index
        for axis, flipped in enumerate(flips):
            a = np.flip(a, 1 + axis) if flipped else a
        for k, p_turn in ((0, 0.7), (1, 0.1), (2, 0.1), (3, 0.1)):
            turned = np.ascontiguousarray(np.rot90(a, k, axes=(1, 2)))
            key = turned.tobytes()
            found[key] = found.get(key, 0.0) + 0.125 * p_turn
            arrays[key] = turned
    keys = sorted(found)
    return [arrays[k] for k in keys], np.array([found[k] for k in keys])


def _draws(seed: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` augmentations of the cube: which arrangement each is, its intensity factor and offset."""
    arrangements, _ = _arrangements()
    ranks = [np.argsort(a.ravel()) for a in arrangements]
    values = 1.0 + np.arange(N**3, dtype=np.float64).reshape(1, N, N, N) / N**3  # 1 to 2: a scale shows
    augment = Compose(pretraining_augmentation(True)).set_random_state(seed=seed)
    which, factor, offset = [], [], []
    for _ in range(count):
        out = np.asarray(augment({"image": values.copy()})["image"], dtype=np.float64)
        order = np.argsort(out.ravel())
        match = [i for i, r in enumerate(ranks) if np.array_equal(order, r)]
        assert len(match) == 1, "an output that is no flip or turn of the input"
        src = values.ravel()[arrangements[match[0]].ravel()]  # the input's values in the output's arrangement
        a, b = np.polyfit(src, out.ravel(), 1)
        assert np.allclose(a * src + b, out.ravel(), atol=1e-5), "intensities changed other than by a scale and shift"
        which.append(match[0])
        factor.append(a)
        offset.append(b)
    return np.array(which), np.array(factor), np.array(offset)


def test_the_augmentation_draws_each_outcome_as_the_paper_says():
    """4 seeds x 1,000 draws: each of the 16 arrangements within 4.5 standard deviations of its analytic
    probability, scaling and shifting each in 10 % of the draws, independently, within their ranges."""
    _, expected = _arrangements()
    assert len(expected) == 16 and np.isclose(expected.sum(), 1.0)
    runs = [_draws(seed, 1000) for seed in range(4)]
    which, factor, offset = (np.concatenate(x) for x in zip(*runs))
    n = len(which)
    counts = np.bincount(which, minlength=len(expected)) / n
    sd = np.sqrt(expected * (1 - expected) / n)
    assert np.all(np.abs(counts - expected) < 4.5 * sd), (counts, expected)
    scaled, shifted = np.abs(factor - 1) > 1e-6, np.abs(offset) > 1e-6
    for hit in (scaled, shifted):
        assert abs(hit.mean() - 0.1) < 4.5 * np.sqrt(0.09 / n), hit.mean()
    assert abs((scaled & shifted).mean() - 0.01) < 4.5 * np.sqrt(0.0099 / n)
    assert np.all(np.abs(factor[scaled] - 1) <= 0.1 + 1e-6) and np.abs(factor[scaled] - 1).max() > 0.08
    assert np.all(np.abs(offset[shifted]) <= 0.1 + 1e-6) and np.abs(offset[shifted]).max() > 0.08
    # the draws differ from seed to seed (each seed is not one lucky sequence)
    assert len({tuple(r[0][:50]) for r in runs}) == 4


def test_augment_false_adds_nothing():
    assert pretraining_augmentation(False) == []
    with pytest.raises(ValueError, match="at least one key"):
        pretraining_augmentation(True, keys=())
