"""Initialisations: random / fbp, and the zero-shot MedGMAE tiling with its frame and intensity mapping."""

import logging
import numpy as np
import pytest
import torch

from medgmae.gaussians import Gaussians3D
from medgmae.networks.medgmae import MedGMAE
from medgmae.render import render_volume
from medgmae.preprocessing import PreprocessingSpec
from recon.initialisation import MU_WATER, fbp_init, hu_to_mu, medgmae_init, mu_to_hu, random_init, window_fbp

HU_WINDOW = (-175.0, 250.0)  # MedGMAE's window, written out independently of the code under test


def _render(g: Gaussians3D, shape):
    return render_volume(*g.tensors(), shape=shape)[0]


def _blob_volume(shape, centre, radius, hu=100.0):
    z, y, x = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij")
    r2 = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2
    hu_vol = torch.where(r2 <= radius**2, torch.tensor(hu), torch.tensor(-1000.0))
    hu_vol = hu_vol + 150.0 * torch.exp(-r2 / (2 * (radius / 2) ** 2)) * (r2 <= radius**2)
    return hu_to_mu(hu_vol)


class VoxelStubModel(torch.nn.Module):
    """A stand-in decoder with a known answer: one narrow Gaussian per input voxel, intensity = the voxel's
    windowed value. Its Gaussians, mapped to the global frame, must reproduce the windowed input exactly."""

    def __init__(self, size=16, sigma=0.2):
        super().__init__()
        self.img_size, self.sigma = (size,) * 3, sigma
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.calls = []

    def predict_gaussians(self, x, mask_ratio=0.0):
        self.calls.append(tuple(x.shape))
        b, n = x.shape[0], self.img_size[0]
        grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32)] * 3, indexing="ij"), -1).reshape(-1, 3)
        means = ((grid + 0.5) / n).expand(b, -1, -1)
        scales = torch.full_like(means, self.sigma / n)
        quats = torch.tensor([1.0, 0, 0, 0]).expand(b, means.shape[1], 4)
        return Gaussians3D(means.contiguous(), scales.contiguous(), quats.contiguous(), x.reshape(b, -1) + 1e-3)


def test_hu_mu_round_trip():
    hu = torch.tensor([-1000.0, 0.0, 250.0, 1000.0])
    torch.testing.assert_close(hu_to_mu(hu), torch.tensor([0.0, MU_WATER, MU_WATER * 1.25, 2 * MU_WATER]))
    torch.testing.assert_close(mu_to_hu(hu_to_mu(hu)), hu)
    torch.testing.assert_close(window_fbp(hu_to_mu(torch.tensor([-500.0, -175.0, 37.5, 250.0, 900.0]))), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))


def test_stub_windows_reproduce_the_windowed_volume():
    """Same spacing as pre-training (1.5 mm): tiling (with a last window flush with the end, overlapping the
    previous one) and intensity mapping must give back window(FBP) * slope voxel for voxel, with no
    duplicated Gaussians in the overlaps."""
    shape = (20, 24, 28)
    vol = _blob_volume(shape, (9.0, 12.5, 15.0), 8.0)
    model = VoxelStubModel(16)
    spec = PreprocessingSpec(spacing=1.5, input_size=16, patch_size=8)
    g = medgmae_init(vol, np.diag([1.5, 1.5, 1.5, 1.0]), model, spec=spec, calibrate=False, min_intensity=0.0, batch_size=3)
    assert sum(c[0] for c in model.calls) == 2 * 2 * 2 and model.calls[0][1:] == (1, 16, 16, 16)
    assert g.num_gaussians == int(np.prod(shape))  # each voxel owned by exactly one window
    rendered = _render(g, shape)
    lo, hi = HU_WINDOW
    expected = (window_fbp(vol) + 1e-3) * (hi - lo) / 1000.0 * MU_WATER
    torch.testing.assert_close(rendered, expected, rtol=2e-3, atol=1e-6)


def test_stub_frame_with_resampling_and_calibration():
    """A finer grid (0.75 mm, anisotropic in z): the bright blob's centroid lands where it is in the FBP and the
    calibrated rendering correlates with the FBP."""
    shape = (24, 40, 36)
    centre = (10.0, 22.0, 14.0)
    vol = _blob_volume(shape, centre, 9.0)
    affine = np.diag([0.75, 0.75, 1.0, 1.0])  # NIfTI (x, y, z) order: (sz, sy, sx) = (1.0, 0.75, 0.75)
    model = VoxelStubModel(12, sigma=0.8)  # overlapping Gaussians: a smooth rendering
    g = medgmae_init(vol, affine, model, spec=PreprocessingSpec(spacing=1.5, input_size=12, patch_size=4))
    r = _render(g, shape)
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij"), -1)

    def centroid(v):
        w = v.clamp_min(0)
        return (grid * w[..., None]).sum((0, 1, 2)) / w.sum()

    torch.testing.assert_close(centroid(r), centroid(vol), atol=0.5, rtol=0)
    corr = float(torch.corrcoef(torch.stack([r.flatten(), vol.flatten()]))[0, 1])
    assert corr > 0.9


def test_real_model_frame_matches_window_render():
    """A (randomly initialised) tiny MedGMAE on a volume of exactly one window: with the reconstruction grid at
    a third of the pre-training spacing (46 voxels of 0.5 mm -> 16 of 1.5 mm, first voxel centres shared),
    global voxel 3j is window voxel j, so the global rendering sampled there equals the model's own rendering of
    its window (times the intensity slope). The window reaches the model in RAS order: (x, y, z) = the
    reconstruction's (z, y, x) transposed."""
    torch.manual_seed(0)
    model = MedGMAE(img_size=16, patch_size=8, model_size="tiny", num_gaussians=32, render_backend="torch").eval()
    model.preprocessing = PreprocessingSpec(spacing=1.5, input_size=16, patch_size=8)
    shape = (46, 46, 46)
    small = _blob_volume((16, 16, 16), (7.0, 8.0, 9.0), 5.0)
    vol = small.repeat_interleave(3, 0).repeat_interleave(3, 1).repeat_interleave(3, 2)[:46, :46, :46]
    g = medgmae_init(vol, np.diag([0.5, 0.5, 0.5, 1.0]), model, calibrate=False, min_intensity=0.0)
    x = window_fbp(small).permute(2, 1, 0)[None, None]  # (z, y, x) -> RAS (x, y, z), sampled at global voxels 3j
    own = model.render(model.predict_gaussians(x))[0, 0].permute(2, 1, 0)
    assert g.num_gaussians == 32
    lo, hi = HU_WINDOW
    r = _render(g, shape)[::3, ::3, ::3] / ((hi - lo) / 1000.0 * MU_WATER)
    torch.testing.assert_close(r, own, rtol=1e-3, atol=1e-4)


def test_probe_receives_ras_windows_from_the_reconstruction_frame():
    """The reconstruction's (z, y, x) arrays reach the decoder in RAS order: a marker superior, mid, left in the
    volume appears at low axis-0 (left), mid axis-1 and high axis-2 (superior) indices of the window."""
    shape = (40, 30, 20)  # (z, y, x): 20 voxels left-right, 30 posterior-anterior, 40 inferior-superior
    hu = torch.full(shape, -1000.0)
    hu[34:37, 14:17, 1:4] = 300.0  # superior, mid, left (x index low = left in a RAS affine)
    calls = []

    class Probe(torch.nn.Module):
        img_size = (48, 48, 48)

        def predict_gaussians(self, x, mask_ratio=0.0):
            calls.append(x[:, 0].clone())
            b = x.shape[0]
            return Gaussians3D(torch.full((b, 1, 3), 0.1), torch.full((b, 1, 3), 0.05),
                               torch.tensor([1.0, 0, 0, 0]).expand(b, 1, 4), torch.ones(b, 1))  # fmt: skip

    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    medgmae_init(hu_to_mu(hu), affine, Probe(), spec=PreprocessingSpec(spacing=1.5, input_size=48, patch_size=8))
    (win,) = calls[0]
    centroid = np.argwhere(win.numpy() > 0.5).mean(0)
    np.testing.assert_allclose(centroid, (2.0, 15.0, 35.0), atol=1e-6)


def test_fbp_and_random_init():
    shape = (16, 20, 20)
    vol = _blob_volume(shape, (8.0, 9.0, 11.0), 6.0)
    g = fbp_init(vol, 300, seed=1)
    assert g.num_gaussians == 300
    means = g.means[0]
    assert (means >= -0.5).all() and (means <= torch.tensor(shape) - 0.5).all()
    # centres sit in the object (FBP > 5 % of max) and concentrate on its edges
    idx = means.round().long().clamp(min=torch.zeros(3, dtype=torch.long), max=torch.tensor(shape) - 1)
    assert (vol[idx[:, 0], idx[:, 1], idx[:, 2]] > 0).float().mean() > 0.95
    r = _render(g, shape)
    corr = float(torch.corrcoef(torch.stack([r.flatten(), vol.flatten()]))[0, 1])
    assert corr > 0.7
    # calibration: least-squares gain, so <r, vol> == <r, r>
    assert abs(float((r * vol).sum() / (r * r).sum()) - 1) < 1e-3
    gr = random_init(vol, 200, seed=0)
    rr = _render(gr, shape)
    assert abs(float((rr * vol).sum() / (rr * rr).sum()) - 1) < 1e-3
    with pytest.raises(ValueError, match="NaN"):
        fbp_init(torch.full(shape, float("nan")), 10)


def test_fbp_init_scales_are_at_least_one_voxel_in_a_thin_volume():
    """A quarter of a 2-slice volume's shortest side is half a voxel: the cap undercut the one-voxel floor, and
    every scale came out 0.5."""
    vol = torch.full((2, 32, 32), 0.02)
    for k in (20, 500):  # sparse centres (local spacing far above the cap) and dense ones
        g = fbp_init(vol, k, seed=0)
        assert float(g.scales.min()) >= 1.0
    wide = fbp_init(torch.full((8, 32, 32), 0.02), 20, seed=0)  # a quarter of 8 slices: the cap is 2 voxels
    assert float(wide.scales.max()) == pytest.approx(2.0)


@pytest.mark.parametrize("seed", range(8))
def test_subdivided_gaussians_carry_their_parents_moments(seed):
    """Children of subdivide_gaussians carry their parents' mass exactly and, up to sampling noise, their centroid
    and spread: analytic moments of the Gaussian mixtures (mass ``I (2 pi)^(3/2) s1 s2 s3``, mixture mean and
    covariance), float64, with covariances built here from quaternions independently of the code under test."""
    from recon.initialisation import subdivide_gaussians

    def rot(q):
        w, x, y, z = torch.nn.functional.normalize(q.double(), dim=-1).unbind(-1)
        return torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).reshape(-1, 3, 3)  # fmt: skip

    def moments(g):
        mu, s, r = g.means[0].double(), g.scales[0].double(), rot(g.quats[0])
        mass = g.intensities[0].double() * s.prod(-1) * (2 * torch.pi) ** 1.5
        w = mass / mass.sum()
        mean = (w[:, None] * mu).sum(0)
        cov_i = r @ torch.diag_embed(s * s) @ r.transpose(1, 2)
        d = mu - mean
        return mass.sum(), mean, (w[:, None, None] * (cov_i + d[:, :, None] * d[:, None, :])).sum(0)

    gen = torch.Generator().manual_seed(seed)
    k, m = 3, 4096
    means = 40.0 * torch.rand(k, 3, generator=gen)
    scales = 3.0 + 6.0 * torch.rand(k, 3, generator=gen)
    quats = torch.nn.functional.normalize(torch.randn(k, 4, generator=gen), dim=-1)
    parent = Gaussians3D(means[None], scales[None], quats[None], 0.5 + torch.rand(1, k, generator=gen))
    kids = subdivide_gaussians(parent, k * m, seed=seed)
    assert kids.num_gaussians == k * m
    assert torch.allclose(kids.scales[0, ::m], parent.scales[0] / 16.0)
    mass0, mean0, cov0 = moments(parent)
    mass1, mean1, cov1 = moments(kids)
    assert abs(float(mass1 / mass0) - 1) < 1e-5
    assert float((mean1 - mean0).norm()) < 0.5  # sampling noise: about s / sqrt(m) = 0.14 voxel per axis
    assert float((cov1 - cov0).norm() / cov0.norm()) < 0.1  # about sqrt(2 / m) = 2 %
    assert subdivide_gaussians(parent, 5) is parent  # budget below 2K: unchanged


def _random_gaussians(seed: int, k: int, shape):
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(1, k, 3, generator=g, dtype=torch.float64) * torch.tensor(shape, dtype=torch.float64) - 0.5
    scales = 0.6 + 1.6 * torch.rand(1, k, 3, generator=g, dtype=torch.float64)
    quats = torch.nn.functional.normalize(torch.randn(1, k, 4, generator=g, dtype=torch.float64), dim=-1)
    truth = torch.rand(1, k, generator=g, dtype=torch.float64) * (torch.rand(1, k, generator=g) > 0.3)
    return means, scales, quats, truth, g


@pytest.mark.parametrize("seed", range(10))
def test_fit_intensities_reaches_the_nnls_optimum(seed):
    """Against scipy's active-set NNLS on the explicit float64 matrix (one column per Gaussian, rendered by the
    float64 reference renderer) for a noisy target: same intensities, none negative."""
    from scipy.optimize import nnls

    from medgmae.render._reference import render_volume_reference
    from recon.initialisation import fit_intensities

    shape, k = (9, 12, 10), 14
    means, scales, quats, truth, gen = _random_gaussians(seed, k, shape)
    one = torch.ones(1, 1, dtype=torch.float64)
    columns = [render_volume_reference(means[:, i : i + 1], scales[:, i : i + 1], quats[:, i : i + 1], one, shape)[0][0] for i in range(k)]
    a = torch.stack([c.flatten() for c in columns], 1).numpy()
    target = torch.from_numpy(a @ truth[0].numpy()).reshape(shape) + 0.05 * torch.randn(shape, generator=gen, dtype=torch.float64)
    expected, _ = nnls(a, target.flatten().numpy())
    start = Gaussians3D(means, scales, quats, torch.full((1, k), 0.5, dtype=torch.float64))
    fitted = fit_intensities(start, target, iterations=400)
    assert (fitted.intensities >= 0).all()
    np.testing.assert_allclose(fitted.intensities[0].numpy(), expected, atol=1e-8, rtol=0)
    assert fitted.means is start.means and fitted.scales is start.scales


def test_fit_intensities_zero_steps_and_bad_count():
    from recon.initialisation import fit_intensities

    means, scales, quats, truth, _ = _random_gaussians(0, 5, (6, 6, 6))
    g = Gaussians3D(means, scales, quats, truth)
    torch.testing.assert_close(fit_intensities(g, torch.zeros(6, 6, 6, dtype=torch.float64), 0).intensities, truth)
    with pytest.raises(ValueError, match="iterations must be a whole number >= 0, got -1"):
        fit_intensities(g, torch.zeros(6, 6, 6, dtype=torch.float64), -1)


def test_fit_intensities_takes_a_numpy_target():
    """A NumPy target ended in ``RuntimeError: Can't call numpy() on Tensor that requires grad``; now it fits as the
    tensor does, toward the intensities a noiseless float64 target was rendered from, and a float32 start too."""
    from recon.initialisation import fit_intensities

    shape = (6, 7, 8)
    means, scales, quats, truth, _ = _random_gaussians(1, 6, shape)
    target = render_volume(means, scales, quats, truth, shape=shape)[0]
    start = Gaussians3D(means, scales, quats, torch.full_like(truth, 0.5))
    fitted = fit_intensities(start, target.numpy(), iterations=30).intensities
    assert fitted.dtype == torch.float64
    assert float((fitted - truth).abs().max()) < 0.2 * float((start.intensities - truth).abs().max())
    torch.testing.assert_close(fitted, fit_intensities(start, target, iterations=30).intensities, rtol=0, atol=0)
    start32 = Gaussians3D(*(t.float() for t in (means, scales, quats)), torch.full(truth.shape, 0.5))
    ours = fit_intensities(start32, target.numpy(), iterations=5).intensities
    torch.testing.assert_close(ours, fit_intensities(start32, target.float(), iterations=5).intensities)


def test_medgmae_init_fit_recovers_what_the_window_clipped():
    """One narrow stub Gaussian per voxel at the pre-training spacing (each touches only its own voxel): the
    windowed, calibrated start cannot carry the blob above the window's top, the fitted start must give back the
    FBP volume itself, voxel for voxel."""
    shape = (20, 24, 28)
    vol = _blob_volume(shape, (9.0, 12.5, 15.0), 8.0, hu=400.0)  # above the window's 250 HU: clipped by it
    model = VoxelStubModel(16, sigma=0.2)
    kw = dict(spec=PreprocessingSpec(spacing=1.5, input_size=16, patch_size=8), min_intensity=0.0, batch_size=3)
    gain = medgmae_init(vol, np.diag([1.5, 1.5, 1.5, 1.0]), model, **kw)
    fitted = medgmae_init(vol, np.diag([1.5, 1.5, 1.5, 1.0]), model, fit_iterations=3, **kw)
    assert float((_render(gain, shape) - vol).abs().max()) > 0.03 * float(vol.max())  # the clipped bump: one level
    torch.testing.assert_close(_render(fitted, shape), vol, rtol=1e-4, atol=1e-6)


def test_no_gaussians_names_a_scan_smaller_than_the_window_or_else_an_empty_fbp():
    """When the decoder keeps no Gaussian the error names the likely cause: a scan that, on the model's grid, is
    mostly padding of its window (its shape and the window given), or else an FBP with nothing in the window."""
    spec = PreprocessingSpec(spacing=1.5, input_size=16, patch_size=8)
    air = lambda shape: hu_to_mu(torch.full(shape, -1000.0))  # noqa: E731  (the stub's Gaussians all at 1e-3: dropped)
    with pytest.raises(ValueError) as small:
        medgmae_init(air((6, 8, 5)), np.diag([1.5, 1.5, 1.5, 1.0]), VoxelStubModel(16), spec=spec)
    message = str(small.value)
    assert message.startswith("the MedGMAE decoder produced no Gaussians inside the volume: the scan is 5x8x6 voxels "
                              "at the model's 1.5x1.5x1.5 mm, smaller than its 16x16x16 window"), message
    assert "give a scan of the field of view the model was pre-trained on" in message and "empty" not in message
    with pytest.raises(ValueError, match=r"no Gaussians inside the volume: is the scan empty\? \(the model sees HU in "
                                         r"\[-175, 250\]"):  # fmt: skip
        medgmae_init(air((16, 16, 16)), np.diag([1.5, 1.5, 1.5, 1.0]), VoxelStubModel(16), spec=spec)


def test_an_empty_fbp_volume_is_named():
    """An FBP volume without voxels failed inside the starts (``max()`` of an empty tensor, MONAI's ``Spacingd``)."""
    for start in (lambda v: fbp_init(v, 10), lambda v: random_init(v, 10)):
        with pytest.raises(ValueError, match=r"the FBP volume must be a \(D, H, W\) tensor with voxels, got shape \(0, 8, 8\)"):
            start(torch.zeros(0, 8, 8))


def test_a_spacing_override_is_warned_of_once(caplog):
    """``reconstruct --model-spacing`` warns of the override naming the model's file; the zero-shot start it then
    runs said it again, naming "the model (model.preprocessing)": a caller that warned passes
    ``overrides_warned``, a Python caller that did not still gets the warning."""
    shape = (24, 24, 24)
    vol = _blob_volume(shape, (12.0, 12.0, 12.0), 6.0)
    model = VoxelStubModel(12, sigma=0.8)
    model.preprocessing = PreprocessingSpec(spacing=2.0, input_size=12, patch_size=4)  # as a loaded model records it
    given = PreprocessingSpec(spacing=1.5, input_size=12, patch_size=4)
    for warned, expected in ((False, 1), (True, 0)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="medgmae"):
            medgmae_init(vol, np.diag([1.5, 1.5, 1.5, 1.0]), model, spec=given, overrides_warned=warned)
        said = [r.getMessage() for r in caplog.records if "model.preprocessing" in r.getMessage()]
        assert len(said) == expected, said
