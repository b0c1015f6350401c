"""The toolkit's moment-matched split (recon.density.split_moments) against analytic answers and a float64 oracle."""

import math

import numpy as np
import pytest
import torch

from medgmae.gaussians import Gaussians3D
from medgmae.rotations import quaternion_to_rotation_matrix
from recon.density import split_moments
from recon.gaussian_recon import GaussianReconConfig, GaussianReconstructor
from recon.geometry import CTGeometry
from recon.projectors import TorchProjector


pytestmark = pytest.mark.usefixtures("one_thread")


def _random_gaussians(seed: int, n: int):
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 3, generator=g) * 20
    scales = 0.3 + torch.rand(n, 3, generator=g) * 5
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1)
    inten = torch.randn(n, generator=g)
    return means, scales, quats, inten


def _mass_mean_cov(means, scales, rot, inten):
    """float64 mass (peak x product of scales), mean and covariance of a set of Gaussians read as one mixture."""
    means, scales, rot, inten = (t.double() for t in (means, scales, rot, inten))
    w = inten * scales.prod(-1)
    mu = (w[:, None] * means).sum(0) / w.sum()
    cov = (rot * scales[:, None, :] ** 2) @ rot.transpose(-1, -2)
    d = means - mu
    cov = (w[:, None, None] * (cov + d[:, :, None] * d[:, None, :])).sum(0) / w.sum()
    return w.sum(), mu, cov


@pytest.mark.parametrize("offset", [0.3, 0.5, 0.7, 0.9])
def test_split_moments_keeps_mass_mean_and_covariance(offset):
    """Over 20 seeds of 30 random Gaussians each: every parent and its two children have the same mass, mean and
    covariance (float64 sums of the children's own covariances and offsets, not the split's formula)."""
    for seed in range(20):
        means, scales, quats, inten = _random_gaussians(seed, 30)
        rot = quaternion_to_rotation_matrix(quats)
        kids = split_moments(means, scales, rot, inten, offset)
        assert kids["means"].shape == (60, 3) and kids["log_scales"].shape == (60, 3) and kids["intensities"].shape == (60,)
        for i in range(30):
            pair = [i, 30 + i]
            m0, mu0, c0 = _mass_mean_cov(means[i : i + 1], scales[i : i + 1], rot[i : i + 1], inten[i : i + 1])
            m1, mu1, c1 = _mass_mean_cov(kids["means"][pair], kids["log_scales"][pair].exp(), rot[[i, i]], kids["intensities"][pair])
            assert float(m1) == pytest.approx(float(m0), rel=1e-5)
            torch.testing.assert_close(mu1, mu0, rtol=0, atol=1e-5)
            torch.testing.assert_close(c1, c0, rtol=1e-5, atol=1e-5 * float(c0.abs().max()))
        # the children are narrower along the parent's largest axis only
        shrunk = kids["log_scales"][:30].exp() < scales - 1e-6
        assert shrunk.sum(-1).eq(1).all() and shrunk.float().argmax(-1).equal(scales.argmax(-1))


def _oracle(means, scales, quats, inten, shape) -> np.ndarray:
    """float64 sum of Gaussians on the voxel grid (no cutoff)."""
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), -1)
    out = np.zeros(shape)
    rot = quaternion_to_rotation_matrix(quats.double()).numpy()
    for m, s, r, a in zip(means.double().numpy(), scales.double().numpy(), rot, inten.double().numpy()):
        local = (grid - m) @ r  # coordinates along the Gaussian's axes (columns of r)
        out += a * np.exp(-0.5 * ((local / s) ** 2).sum(-1))
    return out


def test_split_moments_renders_close_to_the_parent():
    """One Gaussian well inside a grid: its children's rendering differs from the parent's by the analytic 1D
    relative L2 error of the two-component mixture (the other two axes factor out), for each offset."""
    shape = (40, 40, 40)
    means = torch.tensor([[19.5, 20.0, 20.3]])
    scales = torch.tensor([[2.0, 4.0, 2.5]])
    quats = torch.nn.functional.normalize(torch.tensor([[0.9, 0.2, -0.3, 0.1]]), dim=-1)
    inten = torch.tensor([1.0])
    parent = _oracle(means, scales, quats, inten, shape)
    x = np.linspace(-12, 12, 48001)
    for a in (0.5, 0.7):
        kids = split_moments(means, scales, quaternion_to_rotation_matrix(quats), inten, a)
        child = _oracle(kids["means"], kids["log_scales"].exp(), quats.repeat(2, 1), kids["intensities"], shape)
        s = math.sqrt(1 - a * a)
        mix = 0.5 / s * (np.exp(-0.5 * ((x - a) / s) ** 2) + np.exp(-0.5 * ((x + a) / s) ** 2))
        expected = np.sqrt(((mix - np.exp(-0.5 * x**2)) ** 2).sum() / (np.exp(-0.5 * x**2) ** 2).sum())
        got = np.linalg.norm(child - parent) / np.linalg.norm(parent)
        assert got == pytest.approx(expected, rel=0.03), (a, got, expected)
        assert child.sum() == pytest.approx(parent.sum(), rel=1e-5)


def test_split_moments_rejects_bad_offsets():
    means, scales, quats, inten = _random_gaussians(0, 2)
    for bad in (0.0, 1.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="offset"):
            split_moments(means, scales, quaternion_to_rotation_matrix(quats), inten, bad)


@pytest.mark.parametrize("seed", [3, 4, 5, 6, 7])
def test_toolkit_round_keeps_the_rendered_volume(seed):
    """A density-control round with ``split_rule="moments"`` splits the chosen Gaussians (parents removed, their
    Adam moments with them) and leaves the rendered volume's mass unchanged; the drawn rule (the default) does not."""
    g = CTGeometry.parallel((24, 24, 24), 1.0, num_angles=4)
    proj = torch.ones(g.proj_shape)  # not fitted here
    means, scales, quats, inten = _random_gaussians(seed, 12)
    means, scales, inten = means * 0.4 + 8, scales.clamp(max=2.5), inten.abs() + 0.5
    masses = {}
    for rule in ("moments", "sample"):
        cfg = GaussianReconConfig(iterations=10, densify_fraction=0.5, split_rule=rule, prune_intensity=0.0, min_scale=0.3)
        rec = GaussianReconstructor(TorchProjector(g), proj, Gaussians3D(means[None], scales[None], quats[None], inten[None]), cfg)
        rec.grad_accum, rec.grad_count = torch.arange(12.0) + 1, torch.ones(12)
        before = rec.render().detach().double()
        stats = rec.densify_and_prune()
        after = rec.render().detach().double()
        masses[rule] = float(after.sum() / before.sum())
        if rule == "moments":
            assert stats == {"cloned": 0, "split": 6, "pruned": 0}
            assert rec.params["means"].shape[0] == 12 - 6 + 12
            for group in rec.optimizer.param_groups:
                assert group["params"][0] is rec.params[group["name"]]
    assert masses["moments"] == pytest.approx(1.0, abs=0.01)
    assert abs(masses["sample"] - 1.0) > 0.05, masses


# (rotation vector in radians, scales in voxels, intensity): two split (largest scale > split_scale = 2), one cloned
_PARENTS = [
    ((0.9, -0.4, 0.6), (3.0, 1.0, 0.5), 0.7),
    ((-0.3, 1.1, 0.8), (0.6, 2.6, 1.4), -0.45),
    ((1.2, 0.5, -0.7), (1.8, 0.8, 0.4), 1.0),
]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sample_rule_draws_children_from_the_rotated_parent(seed):
    """``split_rule="sample"`` (the default) on three rotated anisotropic parents, each repeated ``n = 3000`` times
    and all chosen. Oracle, in float64 from SciPy's rotations (not the toolkit's quaternion code): a split parent is
    removed and its ``2 n`` children keep its quaternion and intensity, have its scales / 1.6, and are offset by
    draws of ``N(0, R diag(s^2) R^T)``; a cloned parent stays at half its intensity beside ``n`` copies (same scales
    and quaternion, half intensity) offset by draws of ``N(0, R diag(s^2 / 4) R^T)`` (half its spread).

    The offsets are whitened by ``(R diag(s))^-1``: their sample mean and covariance must be 0 and the identity.
    With ``m`` (6000 or 3000) draws the mean's entries have a standard deviation ``1 / sqrt(m)`` and the covariance's
    ``sqrt(2 / m)`` on the diagonal, ``sqrt(1 / m)`` off it, at most 0.018 and 0.026: tolerances of 0.09 and 0.12
    are about 5 of them (and the generator is seeded). Offsets drawn with ``R^T`` instead of ``R`` whiten to
    covariances a few units off the identity; split children at half intensity, or clones at the full spread, are
    off by a factor 2 or 4."""
    from scipy.spatial.transform import Rotation

    n = 3000
    rots = [Rotation.from_rotvec(r) for r, _, _ in _PARENTS]
    quats = torch.tensor(np.array([np.roll(r.as_quat(), 1) for r in rots]), dtype=torch.float32)  # (w, x, y, z)
    scales = torch.tensor([s for _, s, _ in _PARENTS], dtype=torch.float32)
    inten = torch.tensor([a for _, _, a in _PARENTS], dtype=torch.float32)
    centre = torch.tensor([12.0, 11.0, 13.0])
    init = Gaussians3D(centre.expand(3 * n, 3)[None], scales.repeat_interleave(n, 0)[None],
                       quats.repeat_interleave(n, 0)[None], inten.repeat_interleave(n, 0)[None])  # fmt: skip
    g = CTGeometry.parallel((24, 24, 24), 1.0, num_angles=4)
    cfg = GaussianReconConfig(iterations=10, densify_fraction=1.0, max_gaussians=10**6, seed=seed)
    rec = GaussianReconstructor(TorchProjector(g), torch.ones(g.proj_shape), init, cfg)
    rec.grad_accum, rec.grad_count = torch.ones(3 * n), torch.ones(3 * n)
    param_inten = rec.params["intensities"].detach()[::n].double()  # per parent, in the parameters' units
    assert rec.densify_and_prune() == {"cloned": n, "split": 2 * n, "pruned": 0}
    p = {k: v.detach().double() for k, v in rec.params.items()}
    for i, (rot, (_, s, _)) in enumerate(zip(rots, _PARENTS)):
        rows = (p["quats"] - quats[i].double()).abs().amax(-1) < 1e-6
        offsets = p["means"][rows] - centre.double()
        split = i < 2
        if not split:  # the parents stay where they were
            at_centre = offsets.abs().amax(-1) == 0
            assert int(at_centre.sum()) == n
            offsets = offsets[~at_centre]
        assert offsets.shape[0] == 2 * n if split else n
        shrink = 1 / 1.6 if split else 1.0
        expected_scales = torch.tensor(s, dtype=torch.float64) * shrink
        count = int(rows.sum())
        torch.testing.assert_close(p["log_scales"][rows].exp(), expected_scales.expand(count, 3), rtol=1e-5, atol=0)
        expected_inten = param_inten[i] * (1.0 if split else 0.5)
        torch.testing.assert_close(p["intensities"][rows], expected_inten.expand(count), rtol=1e-6, atol=0)
        spread = rot.as_matrix() * (np.asarray(s) * (1.0 if split else 0.5))  # R diag(s): columns are the axes
        white = offsets.numpy() @ np.linalg.inv(spread).T
        np.testing.assert_allclose(white.mean(0), 0.0, atol=0.09)
        np.testing.assert_allclose(np.cov(white.T), np.eye(3), atol=0.12)
