""":func:`medgmae.twod.windows.apply_window`, the map of a NIfTI slice or DICOM frame to 0..1: a given window
(linear, clipped), the 0.5/99.5 percentiles without one, min-max where they coincide, zeros for a flat image;
values checked against hand-computed ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medgmae.twod.windows import apply_window

PATH = Path("slice.nii.gz")


def test_a_given_window_maps_low_to_0_and_high_to_1_linearly_and_clips():
    arr = np.array([[-1000.0, -350.0, 25.0], [400.0, 775.0, 1500.0]], np.float64)
    out, used = apply_window(arr, PATH, (-350.0, 400.0))
    np.testing.assert_allclose(out, [[0.0, 0.0, 0.5], [1.0, 1.0, 1.0]], atol=1e-7)
    assert out.dtype == np.float32 and used == {"window": [-350.0, 400.0], "window_source": "given"}
    out, _ = apply_window(np.array([[100.0, 150.0, 175.0]]), PATH, [100, 200], source="recorded")
    np.testing.assert_allclose(out, [[0.0, 0.5, 0.75]], atol=1e-7)


def test_without_a_window_the_0_5_and_99_5_percentiles_map_to_0_and_1():
    """0..999 in a 25 x 40 image: the linear-interpolation percentiles are 999 * 0.005 = 4.995 and 994.005."""
    arr = np.arange(1000, dtype=np.int16).reshape(25, 40)
    out, used = apply_window(arr, PATH, None)
    assert used["window_source"] == "percentiles 0.5/99.5"
    np.testing.assert_allclose(used["window"], [4.995, 994.005], rtol=1e-6)
    want = np.clip((np.arange(1000.0) - 4.995) / (994.005 - 4.995), 0, 1).reshape(25, 40)
    np.testing.assert_allclose(out, want, atol=1e-6)
    assert out[0, :5].max() == 0.0 and out[-1, -5:].min() == 1.0


def test_coinciding_percentiles_fall_back_to_min_max():
    """One bright voxel in 1000: both percentiles are the background, so the image's min and max are used."""
    arr = np.full((10, 100), -20.0, np.float32)
    arr[3, 7] = 80.0
    out, used = apply_window(arr, PATH, None)
    assert used == {"window": [-20.0, 80.0], "window_source": "min-max"}
    assert out[3, 7] == 1.0 and np.count_nonzero(out) == 1


@pytest.mark.parametrize("window", [None, (-5.0, -5.0)])
def test_a_flat_image_or_an_empty_window_gives_zeros_not_nan(window):
    out, used = apply_window(np.full((4, 6), 7.0), PATH, window)
    assert np.isfinite(out).all() and not out.any() and out.shape == (4, 6)
    if window is None:
        assert used == {"window": [7.0, 7.0], "window_source": "min-max"}


def test_bad_images_are_refused_naming_the_file():
    with pytest.raises(ValueError, match="slice.nii.gz: empty image"):
        apply_window(np.zeros((0, 3)), PATH, None)
    with pytest.raises(ValueError, match="slice.nii.gz: image contains NaN or infinite values"):
        apply_window(np.array([[0.0, np.nan]]), PATH, (0.0, 1.0))
