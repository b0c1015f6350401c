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


def _arrangements(plane: tuple[int, int] = (0, 1)) -> tuple[list[np.ndarray], np.ndarray]:
    """The distinct arrangements of the cube's voxel indices ``(C, x, y, z)``, turned in the spatial axes
    ``plane``, and their analytic probabilities."""
    index = np.arange(N**3).reshape(1, N, N, N)
    found: dict[bytes, float] = {}
    arrays: dict[bytes, np.ndarray] = {}
    for flips in itertools.product((False, True), repeat=3):
        a = index
        for axis, flipped in enumerate(flips):
            a = np.flip(a, 1 + axis) if flipped else a
        for k, p_turn in ((0, 0.7), (1, 0.1), (2, 0.1), (3, 0.1)):
            turned = np.ascontiguousarray(np.rot90(a, k, axes=(1 + plane[0], 1 + plane[1])))
            key = turned.tobytes()
            found[key] = found.get(key, 0.0) + 0.125 * p_turn
            arrays[key] = turned
    keys = sorted(found)
    return [arrays[k] for k in keys], np.array([found[k] for k in keys])


def _draws(seed: int, count: int, orientation: str = "RAS", plane=(0, 1)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` augmentations of the cube in ``orientation``: which arrangement (turned in ``plane``) each is, its
    intensity factor and offset."""
    arrangements, _ = _arrangements(plane)
    ranks = [np.argsort(a.ravel()) for a in arrangements]
    values = 1.0 + np.arange(N**3, dtype=np.float64).reshape(1, N, N, N) / N**3  # 1 to 2: a scale shows
    augment = Compose(pretraining_augmentation(True, orientation)).set_random_state(seed=seed)
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


@pytest.mark.parametrize("orientation, plane", [("LPS", (0, 1)), ("SAR", (1, 2)), ("PIL", (0, 2)), ("ILA", (1, 2))])
def test_the_turn_is_in_the_axial_plane_of_any_orientation(orientation, plane):
    """The axes coded L/R and P/A hold the axial plane whatever their order: every draw is one of the arrangements
    turned in that plane (a turn in another plane swaps an axis with I/S and matches none), at their probabilities."""
    which, _, _ = _draws(7, 1500, orientation, plane)
    _, expected = _arrangements(plane)
    counts = np.bincount(which, minlength=len(expected)) / len(which)
    assert np.all(np.abs(counts - expected) < 4.5 * np.sqrt(expected * (1 - expected) / len(which))), (counts, expected)


def test_augment_false_adds_nothing_and_nonsense_is_refused():
    assert pretraining_augmentation(False) == []
    with pytest.raises(ValueError, match="at least one key"):
        pretraining_augmentation(True, keys=())
    for bad in ("RAR", "RA", "XYZ", "RASL"):
        with pytest.raises(ValueError, match="one of L/R, P/A and I/S each"):
            pretraining_augmentation(True, bad)


def _bundle_pipelines(tmp_path, augment: bool, orientation: str = "RAS"):
    """The pre-training bundle's training and validation pipelines as its config builds them (no data read)."""
    from monai.bundle import ConfigParser

    from pretrain_helpers import TRAIN

    parser = ConfigParser()
    parser.read_config(TRAIN)
    parser.update({"bundle_root": str(tmp_path), "augment": augment, "orientation": orientation, "has_labels": False, "keys": ["image"]})
    return parser.get_parsed_content("train#preprocessing"), parser.get_parsed_content("val#preprocessing")


def test_the_bundle_augments_training_crops_only_and_caches_the_same_volumes(tmp_path):
    """With ``augment`` true the training crops get the augmentation, turned in the orientation's axial plane; the
    validation crops never do; the disk cache's record (the deterministic head of the pipeline) is the same either
    way, so switching ``augment`` reuses the cached volumes."""
    from monai.transforms import RandFlipd, RandRotate90d, RandScaleIntensityd, RandShiftIntensityd

    from medgmae.data.cache import cache_folder

    augmenting = (RandFlipd, RandRotate90d, RandScaleIntensityd, RandShiftIntensityd)
    train_on, val_on = _bundle_pipelines(tmp_path, True, "SAR")
    train_off, val_off = _bundle_pipelines(tmp_path, False, "SAR")
    assert sum(isinstance(t, augmenting) for t in train_on.transforms) == 6
    assert not any(isinstance(t, augmenting) for t in [*train_off.transforms, *val_on.transforms, *val_off.transforms])
    turn = next(t for t in train_on.transforms if isinstance(t, RandRotate90d))
    assert tuple(turn.spatial_axes) == (1, 2)
    assert cache_folder(tmp_path, train_on, create=False) == cache_folder(tmp_path, train_off, create=False)
    assert cache_folder(tmp_path, train_on, create=False) != cache_folder(tmp_path, _bundle_pipelines(tmp_path, True)[0], create=False)
    assert not any(tmp_path.rglob("*.nii.gz"))  # nothing was generated or read
