"""Masked PSNR of pre-training's validation: an item with no masked voxel is scored over all its voxels (a
finite value computed here with NumPy), not NaN."""

from __future__ import annotations

import numpy as np
import torch

from medgmae.mae_training.validation import masked_psnr_per_sample


def test_an_item_without_masked_voxels_is_scored_over_all_its_voxels():
    rng = np.random.default_rng(0)
    target = rng.random((2, 1, 4, 5, 6))
    pred = target + rng.normal(0.0, 0.1, target.shape)
    mask = np.zeros((2, 1, 4, 5, 6))
    mask[0, 0, 1:3, 2:4, :] = 1.0  # item 0: some masked voxels; item 1: none
    got = masked_psnr_per_sample(*(torch.from_numpy(a).float() for a in (pred, target, mask)), data_range=2.0)
    err = (pred - target) ** 2
    want = [10 * np.log10(4.0 / err[0][mask[0] > 0].mean()), 10 * np.log10(4.0 / err[1].mean())]
    assert torch.isfinite(got).all()
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)
