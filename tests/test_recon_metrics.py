"""recon.metrics against scikit-image's metrics, called with the conventions the module docstring promises (the
reference's range ``max - min`` as the data range, a 7^3 uniform window or the largest odd one that fits, K1 = 0.01,
K2 = 0.03), on attenuation-like volumes (about 0.02 per mm with a non-zero minimum), where a data range of 1 or a
PSNR of ``20 log10(R^2 / MSE)`` would be far off."""

import math

import numpy as np
import pytest
import torch

from recon.metrics import evaluate, psnr, ssim


def _pair(seed: int, shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    """A reference in ``[0.01, 0.03]`` per mm (smooth along x, so that SSIM is not near 0) and a noisy copy."""
    rng = np.random.default_rng(seed)
    ref = 0.01 + 0.02 * np.cumsum(rng.random(shape), axis=-1) / shape[-1]
    rec = ref + rng.normal(0, 0.002, shape)
    return rec, ref


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("shape", [(12, 10, 9), (9, 16, 8)])
def test_psnr_and_ssim_match_scikit_image_on_the_reference_range(seed, shape):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    rec, ref = _pair(seed, shape)
    rng = ref.max() - ref.min()
    assert ref.min() > 0.005 and rng < 0.03
    expected_psnr = peak_signal_noise_ratio(ref, rec, data_range=rng)
    expected_ssim = structural_similarity(ref, rec, data_range=rng, win_size=7, K1=0.01, K2=0.03,
                                          gaussian_weights=False)  # fmt: skip
    assert psnr(rec, ref) == pytest.approx(expected_psnr, rel=1e-12)
    assert psnr(rec, ref) == pytest.approx(10 * math.log10(rng**2 / np.mean((rec - ref) ** 2)), rel=1e-12)
    assert ssim(rec, ref) == pytest.approx(expected_ssim, rel=1e-9)
    assert 0.2 < expected_ssim < 0.95  # neither saturated nor noise
    torch_rec, torch_ref = torch.from_numpy(rec).float(), torch.from_numpy(ref).float()
    assert evaluate(torch_rec, torch_ref)["psnr"] == pytest.approx(expected_psnr, rel=1e-4)
    assert evaluate(torch_rec, torch_ref)["data_range"] == pytest.approx(rng, rel=1e-6)


@pytest.mark.parametrize("shape, window", [((6, 12, 12), 5), ((12, 5, 9), 5), ((8, 8, 4), 3), ((7, 7, 7), 7)])
def test_ssim_of_a_volume_with_a_side_shorter_than_7_uses_the_largest_odd_window_that_fits(shape, window):
    from skimage.metrics import structural_similarity

    rec, ref = _pair(11, shape)
    expected = structural_similarity(ref, rec, data_range=ref.max() - ref.min(), win_size=window, K1=0.01, K2=0.03)
    assert ssim(rec, ref) == pytest.approx(expected, rel=1e-9)


def test_ssim_refuses_a_volume_too_thin_for_a_window():
    rec, ref = _pair(0, (2, 9, 9))
    with pytest.raises(ValueError, match="too small"):
        ssim(rec, ref)
