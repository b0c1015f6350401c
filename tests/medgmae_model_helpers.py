"""The small MedGMAE / voxel-MAE models, volumes and generators that the model tests share."""

from __future__ import annotations

import pytest
import torch

from medgmae.networks import MedGMAE, VoxelMAE

#: Input edge, patch edge and Gaussian count (per level) of the small models.
IMG, PATCH, K = 32, 8, 12


def small_medgmae(**kw) -> MedGMAE:
    """A tiny MedGMAE of ``K`` Gaussians on ``IMG``^3 inputs in ``PATCH``^3 patches, seeded with 0 (``kw`` added)."""
    torch.manual_seed(0)
    return MedGMAE(img_size=IMG, patch_size=PATCH, model_size="tiny", num_gaussians=K, **kw)


def small_voxel_mae(**kw) -> VoxelMAE:
    """A tiny voxel-MAE on ``IMG``^3 inputs in ``PATCH``^3 patches, seeded with 0 (``kw`` added)."""
    torch.manual_seed(0)
    return VoxelMAE(img_size=IMG, patch_size=PATCH, model_size="tiny", **kw)


def random_volume(b: int = 2, seed: int = 1) -> torch.Tensor:
    """``b`` volumes ``(b, 1, IMG, IMG, IMG)`` of uniform noise in [0, 1), seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, IMG, IMG, IMG, generator=g)


def seeded_generator(seed: int = 7) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (for the masks the models draw)."""
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def models():
    """A MedGMAE, a MedGMAE* and a voxel-MAE, built once per module."""
    return {"medgmae": small_medgmae(), "star": small_medgmae(multi_level=True), "voxel": small_voxel_mae()}
