"""A tiny 2D GMAE for tests."""

from __future__ import annotations

import torch

from medgmae.twod.gmae import GMAE2D


def tiny_gmae2d(in_channels=1, k=32, size=32, **kw):
    torch.manual_seed(0)
    return GMAE2D(img_size=size, patch_size=8, in_channels=in_channels, model_size="tiny", num_gaussians=k, **kw)
