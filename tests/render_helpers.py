"""Shared by the renderer's tests (test_render.py, test_render_triton.py, test_render_launch.py): random and
edge-case Gaussians and the comparison with the float64 dense reference
(:func:`medgmae.render._reference.render_volume_reference`), whose ambiguity term ``amb`` widens the bound where
a voxel lies on the cut-off boundary."""

from __future__ import annotations

import math

import torch


def assert_matches_reference(out, ref, amb, rtol=1e-4, atol=2e-5):
    scale = max(1.0, ref.abs().max().item())
    err = (out.detach().cpu().double() - ref).abs()
    bound = atol * scale + rtol * ref.abs() + amb
    worst = (err - bound).max().item()
    assert worst <= 0, f"max excess error {worst:.3g} (max err {err.max().item():.3g}, scale {scale:.3g})"


def random_gaussians(b, k, shape, seed, scale_range=(0.4, 4.0), dtype=torch.float32, margin=3.0):
    """Rotated anisotropic Gaussians, centres spread over the volume and up to ``margin`` voxels beyond it."""
    g = torch.Generator().manual_seed(seed)
    n = torch.tensor(shape, dtype=torch.float64)
    means = torch.rand(b, k, 3, generator=g, dtype=torch.float64) * (n + 2 * margin) - margin
    lo, hi = math.log(scale_range[0]), math.log(scale_range[1])
    scales = torch.exp(torch.rand(b, k, 3, generator=g, dtype=torch.float64) * (hi - lo) + lo)
    quats = torch.randn(b, k, 4, generator=g, dtype=torch.float64)
    intensities = torch.rand(b, k, generator=g, dtype=torch.float64) * 2.0 - 0.5
    return tuple(t.to(dtype) for t in (means, scales, quats, intensities))


def special_gaussians(shape, dtype=torch.float32, tiny=0.05):
    """One batch item of edge cases: wholly outside (small), outside but reaching in (huge), tiny, huge, needle."""
    d, h, w = shape
    means = torch.tensor(
        [
            [-30.0, h / 2, w / 2],  # far outside, small: contributes nothing
            [d + 6.0, -4.0, w + 3.0],  # outside the corner, large: reaches in
            [d / 2, h / 2 + 0.3, w / 2 - 0.2],  # tiny
            [d / 3, h / 3, w / 3],  # huge (covers everything, box clipped)
            [1.2, h - 2.4, 2.2],  # needle
            [d - 1.0, 0.5, w - 0.5],  # near a corner, inside
        ],
        dtype=torch.float64,
    )
    scales = torch.tensor(
        [[1.0, 1.0, 1.0], [5.0, 3.0, 4.0], [tiny, tiny * 1.5, tiny], [60.0, 45.0, 80.0], [6.0, 0.3, 0.4],
         [1.5, 0.8, 2.0]],
        dtype=torch.float64,
    )  # fmt: skip
    quats = torch.tensor(
        [[1.0, 0, 0, 0], [0.9, 0.3, -0.2, 0.1], [0.5, 0.5, 0.5, 0.5], [0.7, -0.1, 0.6, 0.2], [0.8, 0.4, 0.4, 0.2],
         [0.1, 0.9, -0.3, 0.2]],
        dtype=torch.float64,
    )  # fmt: skip
    intensities = torch.tensor([1.0, 0.8, 2.0, 0.3, -0.7, 1.1], dtype=torch.float64)
    return tuple(t.unsqueeze(0).to(dtype) for t in (means, scales, quats, intensities))
