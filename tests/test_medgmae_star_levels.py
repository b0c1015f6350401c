"""MedGMAE*'s levels: child counts, scales shrinking from the level-0 ancestor, intensity rules, the rendered sum."""

from __future__ import annotations

import pytest
import torch

from medgmae.gaussians import Gaussians3D
from medgmae.networks.medgmae import ResidualGaussianLevel

from medgmae_model_helpers import K, random_volume as _volume, small_medgmae as _gmae


def test_star_levels_counts_parents_and_scale_shrink():
    model = _gmae(multi_level=True, level_multipliers=(1, 2, 4), level_deltas=(0.02, 0.05), scale_cap=0.3)
    x = _volume(1)
    with torch.no_grad():
        latent, _, ids = model.encoder(x)
        levels = model.decode_gaussians(latent, ids)
    assert [g.num_gaussians for g in levels] == [K, 2 * K, 4 * K]
    assert model.total_gaussians == 7 * K
    s0 = levels[0].scales / 0.3  # relative (sigmoid) scales of the roots
    for l, (g, delta) in enumerate(zip(levels[1:], (0.02, 0.05)), start=1):
        parent, root = levels[l - 1], s0.repeat_interleave(2**l, dim=1)
        # each child stays within sigma_mu of its parent (children of parent p at p * 2 + c)
        assert (g.means - parent.means.repeat_interleave(2, dim=1)).abs().max() <= model.sigma_mu + 1e-6
        # s_l = s_0 + tanh(.) * 0.1 - delta_l in units of the cap
        assert ((g.scales / 0.3 - (root - delta)).abs() <= 0.1 + 1e-6).all()
        assert torch.allclose(g.quats.norm(dim=-1), torch.ones(1, g.num_gaussians))
    # with zero residuals the scales shrink exactly by delta_l per level: monotone
    lvl = ResidualGaussianLevel(dim=8, ratio=2, delta=0.05, scale_cap=0.3)
    parent = Gaussians3D(torch.rand(1, 3, 3), torch.full((1, 3, 3), 0.06), torch.randn(1, 3, 4), torch.rand(1, 3))
    root = torch.full((1, 3, 3), 0.2)
    child, _ = lvl.refine(parent, root, torch.zeros(1, 6, 11))
    assert torch.allclose(child.scales, torch.full((1, 6, 3), (0.2 - 0.05) * 0.3))
    assert torch.equal(child.means, parent.means.repeat_interleave(2, dim=1))
    # large negative residuals are clamped positive
    child, _ = lvl.refine(parent, torch.full((1, 3, 3), 0.01), torch.full((1, 6, 11), -50.0))
    assert (child.scales > 0).all()


def test_star_levels_shrink_from_the_level_0_ancestor_not_the_parent():
    """MedGMAE*'s ``s_l = s_0 + tanh(.) * sigma - delta_l`` is relative to the level-0 ancestor's scale ``s_0``:
    ``refine`` hands each child its ancestor's relative scale (the root's, repeated per child), and with zero
    residual heads a level-2 Gaussian's scale is ``cap * (s_0 - delta_2)`` (from its parent's it would be
    ``cap * (s_0 - delta_1 - delta_2)``)."""
    lvl = ResidualGaussianLevel(dim=8, ratio=2, delta=0.05, scale_cap=0.3)
    parent = Gaussians3D(torch.rand(1, 3, 3), torch.full((1, 3, 3), 0.06), torch.randn(1, 3, 4), torch.rand(1, 3))
    root = torch.rand(1, 3, 3) * 0.3 + 0.2
    _, child_root = lvl.refine(parent, root, torch.randn(1, 6, 11))
    assert torch.equal(child_root, root.repeat_interleave(2, dim=1))
    model = _gmae(multi_level=True, level_multipliers=(1, 2, 4), level_deltas=(0.02, 0.05), scale_cap=0.3)
    for level in model.levels:
        torch.nn.init.zeros_(level.heads.weight)
    with torch.no_grad():
        latent, _, ids = model.encoder(_volume(1))
        levels = model.decode_gaussians(latent, ids)
    s0 = levels[0].scales.double() / 0.3
    assert torch.allclose(levels[2].scales.double(), 0.3 * (s0.repeat_interleave(4, dim=1) - 0.05), atol=1e-6)


def test_star_child_intensity_rules_against_their_formulas():
    """Both rules against their closed forms in float64; under "logit" a child that "clamp" switches off (residual
    pushing it below 0) still gets a gradient."""
    parent = Gaussians3D(torch.rand(1, 5, 3), torch.full((1, 5, 3), 0.06), torch.randn(1, 5, 4), torch.rand(1, 5) * 0.3)
    root = torch.full((1, 5, 3), 0.2)
    r = torch.randn(1, 10, 11) * 3.0
    ip = parent.intensities.double().repeat_interleave(2, dim=1)
    t = torch.tanh(r[..., 10].double())
    logit = ResidualGaussianLevel(dim=8, ratio=2, delta=0.05, scale_cap=0.3)
    child, _ = logit.refine(parent, root, r)
    expect = torch.sigmoid(torch.log(ip / (1 - ip)) + 3.0 * t)
    assert torch.allclose(child.intensities.double(), expect, rtol=1e-5, atol=1e-7)
    clamp = ResidualGaussianLevel(dim=8, ratio=2, delta=0.05, scale_cap=0.3, intensity_residual="clamp")
    child, _ = clamp.refine(parent, root, r)
    assert torch.allclose(child.intensities.double(), (ip + 0.1 * t).clamp(0, 1), atol=1e-7)
    # a dim parent and a strongly negative residual: clamp gives 0 and no gradient, logit a positive one
    dim = Gaussians3D(parent.means, parent.scales, parent.quats, torch.full((1, 5), 0.05))
    for level, has_grad in ((clamp, False), (logit, True)):
        rr = torch.full((1, 10, 11), -5.0, requires_grad=True)
        child, _ = level.refine(dim, root, rr)
        child.intensities.sum().backward()
        assert (rr.grad[..., 10].abs() > 0).all() == has_grad
        assert ((child.intensities > 0).all()) == has_grad
    with pytest.raises(ValueError, match="intensity_residual"):
        ResidualGaussianLevel(dim=8, ratio=2, delta=0.05, scale_cap=0.3, intensity_residual="relu")


def test_star_renders_the_sum_of_levels():
    model = _gmae(multi_level=True)
    x = _volume(1)
    with torch.no_grad():
        latent, _, ids = model.encoder(x)
        levels = model.decode_gaussians(latent, ids)
        pred, g = model.reconstruct(latent, ids)
        summed = sum(model.render(lv) for lv in levels)
    assert g.num_gaussians == 7 * K
    assert torch.allclose(pred, summed, atol=1e-5)
