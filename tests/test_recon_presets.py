"""Reconstruction presets: the 3dgr-ct preset against SigmaLDC/3DGR-CT's published numbers, its initialisation
and density control, a short run, the half-resolution stage, and safe loading of resume states."""

import inspect
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from medgmae.data.phantom import generate_phantom
from medgmae.gaussians import Gaussians3D
from recon.coarse import half_geometry, halving_matrix
from recon.fbp import fbp
from recon.gaussian_recon import GaussianReconConfig, GaussianReconstructor
from recon.geometry import CTGeometry
from recon.initialisation import hu_to_mu
from recon.init_3dgr import init_3dgr_ct
from medgmae.torch_files import load_torch_file
from recon.metrics import psnr
from recon.presets import THREEDGR_CT, preset_config, sparse_start_growth
from recon.projectors import TorchProjector, make_projector

pytestmark = pytest.mark.usefixtures("one_thread")

# Transcribed by hand from github.com/SigmaLDC/3DGR-CT (commit da9a7c2), files under 3DGR-CT/.
# configs/gaussian.yaml
YAML = dict(
    max_iter=15000, num_gaussian=50000, start=0.15, air_threshold=0.05, ini_intensity=0.25, ini_sigma=0.15,
    low_reso_stage=5000, densification_interval=100, densify_from_iter=0, densify_until_iter=15000,
    max_gaussians=300000, max_grad=1.0e-05, min_intensity=0.0001, sigma_extent=2, tv_weight=0.0, spatial_lr_scale=1,
)  # fmt: skip
# train_ct_recon.py, class OptimizationParams
OPT = dict(position_lr_init=0.002, position_lr_final=0.000002, position_lr_max_steps=30_000, intensity_lr=0.05,
           scaling_lr=0.005, rotation_lr=0.001, percent_dense=0.01)  # fmt: skip
# models/gaussian_model.py: create_from_fbp (kernel_size = 5, "+ 0.001"), densify_and_split (N=2, / (0.8*N)),
# densify_and_prune (min scaling < 0.003); gs_utils/discretize_grid.cu (coeff = 2.0)
MODEL = dict(neighbour_kernel=5, intensity_offset=0.001, split_children=2, split_scale_divisor=1.6, prune_min_scale=0.003,
             render_extent_sigmas=2.0)  # fmt: skip


def test_published_table_matches_the_transcription():
    table = {k: v[0] for k, v in THREEDGR_CT.items()}
    for k, v in {**YAML, **OPT, **MODEL}.items():
        assert table[k] == pytest.approx(v, rel=1e-12), k
    assert all(v[1] for v in THREEDGR_CT.values())  # every number names its source file


def test_3dgr_ct_preset_uses_the_published_settings():
    c = GaussianReconConfig.preset("3dgr-ct", YAML["max_iter"])
    assert c.preset_name == "3dgr-ct" and c.intensity_activation == "sigmoid" and c.length_unit == "volume" and c.loss == "mse"
    assert (c.lr_means, c.lr_scales, c.lr_quats, c.lr_intensities) == (OPT["position_lr_init"], OPT["scaling_lr"], OPT["rotation_lr"], OPT["intensity_lr"])
    assert c.lr_final_ratio == 1.0  # only the position rate is scheduled
    assert c.lr_means * c.lr_means_final_ratio == pytest.approx(OPT["position_lr_final"], rel=1e-9)
    assert c.lr_means_horizon * YAML["max_iter"] == pytest.approx(OPT["position_lr_max_steps"])
    assert c.coarse_iterations == YAML["low_reso_stage"] and c.coarse_mode == "half"
    assert (c.densify_every, c.densify_from, c.densify_until) == (100, 0, 15000) and c.densify_mode == "3dgr-ct"
    assert c.grad_threshold == YAML["max_grad"] and c.prune_intensity == YAML["min_intensity"]
    assert c.split_scale == pytest.approx(OPT["percent_dense"] * YAML["sigma_extent"])
    assert c.prune_min_scale == MODEL["prune_min_scale"] and c.max_gaussians == YAML["max_gaussians"]
    assert c.tv_weight == YAML["tv_weight"] and c.cutoff == MODEL["render_extent_sigmas"]
    defaults = {k: p.default for k, p in inspect.signature(init_3dgr_ct).parameters.items() if k != "fbp_volume"}
    assert defaults == {"num_gaussians": 50000, "start": 0.15, "air_threshold": 0.05, "ini_intensity": 0.25, "ini_sigma": 0.15,
                        "neighbour_kernel": 5, "intensity_offset": 0.001}  # fmt: skip
    # schedules scale with the run: a 3000-iteration run has a 1000-iteration half-resolution stage
    short = GaussianReconConfig.preset("3dgr-ct", 3000)
    assert short.coarse_iterations == 1000 and short.densify_until == 3000
    assert GaussianReconConfig.preset("toolkit", 200) == GaussianReconConfig(iterations=200)
    assert GaussianReconConfig.preset("toolkit", 200).coarse_iterations == 0  # measured: slower, no higher peak
    with pytest.raises(ValueError, match="preset"):
        preset_config("3dgr", 10)
    with pytest.raises(ValueError, match="unknown"):
        preset_config("3dgr-ct", 10, lr_xyz=1.0)
    with pytest.raises(ValueError, match="coarse_iterations must be a whole number >= 0"):
        preset_config("toolkit", 10, coarse_iterations=-1)


def test_3dgr_ct_position_learning_rate_schedule():
    """get_expon_lr_func (gs_utils/general_utils.py): exp(log(lr0) (1 - t) + log(lr1) t), t = step / max_steps."""
    g = CTGeometry.parallel((8, 12, 12), 1.0, num_angles=4)
    p = TorchProjector(g)
    init, vs = init_3dgr_ct(torch.rand(8, 12, 12, generator=torch.Generator().manual_seed(0)) + 0.1, 20)
    rec = GaussianReconstructor(p, torch.zeros(g.proj_shape), init, GaussianReconConfig.preset("3dgr-ct", 15000), value_scale=vs)
    for step in (0, 1, 777, 15000):
        t = min(step / 30000, 1.0)
        expect = math.exp(math.log(0.002) * (1 - t) + math.log(2e-6) * t) * 12  # voxels: the largest side is 12
        lrs = rec.learning_rates(step)
        assert lrs["means"] == pytest.approx(expect, rel=1e-9)
        assert (lrs["intensities"], lrs["log_scales"], lrs["quats"]) == pytest.approx((0.05, 0.005, 0.001), rel=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_init_3dgr_ct_against_a_numpy_scipy_oracle(seed):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    vol = rng.uniform(0.0, 0.03, size=(20, 18, 22)).astype(np.float32)
    g, vs = init_3dgr_ct(torch.from_numpy(vol), num_gaussians=150)
    assert vs == pytest.approx(float(vol.max()))
    half = (vol / vol.max())[::2, ::2, ::2].astype(np.float64)
    half[half < 0.05] = 0
    grad = np.zeros_like(half)
    c = half[1:-1, 1:-1, 1:-1]
    grad[1:-1, 1:-1, 1:-1] = np.sqrt(np.diff(half, axis=0)[1:, 1:-1, 1:-1] ** 2 + np.diff(half, axis=1)[1:-1, 1:, 1:-1] ** 2 + np.diff(half, axis=2)[1:-1, 1:-1, 1:] ** 2)
    assert np.allclose(np.abs(c - half[2:, 1:-1, 1:-1]), np.abs(np.diff(half, axis=0)[1:, 1:-1, 1:-1]))
    order = np.argsort(-grad.ravel(), kind="stable")
    skip = int(0.15 * half.size)
    chosen = order[skip : skip + 150]
    coords = np.stack(np.unravel_index(chosen, half.shape), -1)
    mask = np.zeros(half.shape)
    mask[tuple(coords.T)] = 1
    counts = np.rint(ndimage.uniform_filter(mask, size=5, mode="constant") * 125)[tuple(coords.T)]
    got = {tuple(m): (s, i) for m, s, i in zip(g.means[0].round().int().tolist(), g.scales[0, :, 0].tolist(), g.intensities[0].tolist())}
    assert len(got) == 150 and g.num_gaussians == 150
    for (z, y, x), n in zip(coords, counts):
        s, i = got[(2 * z, 2 * y, 2 * x)]
        assert s == pytest.approx(0.15 / n * 22, rel=1e-5)  # the normalised frame's unit is the largest side
        assert i == pytest.approx((0.25 * half[z, y, x] + 0.001) * vs, rel=1e-5)
    torch.testing.assert_close(g.quats[0], torch.tensor([1.0, 0, 0, 0]).expand(150, 4))


def test_3dgr_ct_density_control_clones_splits_prunes():
    g = CTGeometry.parallel((8, 12, 12), 1.0, num_angles=4)
    means = torch.tensor([[[3.0, 5.0, 5.0], [4.0, 6.0, 6.0], [2.0, 2.0, 2.0], [5.0, 5.0, 5.0]]])
    scales = torch.tensor([[[0.1] * 3, [1.0] * 3, [1.0] * 3, [1.0] * 3]])  # 0.1 / 12 <= 0.02 < 1.0 / 12
    quats = torch.tensor([1.0, 0, 0, 0]).expand(1, 4, 4).contiguous()
    inten = torch.tensor([[0.5, 0.4, 1e-6, 0.3]])
    cfg = GaussianReconConfig.preset("3dgr-ct", 10)
    rec = GaussianReconstructor(TorchProjector(g), torch.zeros(g.proj_shape), Gaussians3D(means, scales, quats, inten), cfg, value_scale=1.0)
    rec.last_grad_norm = torch.tensor([1e-6, 1e-6, 0.0, 1e-7])  # x 12 (normalised frame): >= 1e-5 for the first two only
    stats = rec.densify_and_prune()
    assert stats == {"cloned": 1, "split": 1, "pruned": 1}
    out = rec.gaussians()
    assert out.num_gaussians == 5  # A, D, clone of A, two children of B
    torch.testing.assert_close(out.intensities[0, :3], torch.tensor([0.25, 0.3, 0.25]), rtol=1e-5, atol=0)
    torch.testing.assert_close(out.means[0, 2], means[0, 0])  # the clone sits on its parent
    torch.testing.assert_close(out.scales[0, 3:], torch.full((2, 3), 1.0 / 1.6))
    torch.testing.assert_close(out.intensities[0, 3:], torch.tensor([0.4, 0.4]), rtol=1e-5, atol=0)
    assert (out.means[0, 3:] - means[0, 1]).abs().max() < 5.0 and not torch.equal(out.means[0, 3], out.means[0, 4])
    for group in rec.optimizer.param_groups:
        assert group["params"][0] is rec.params[group["name"]]
        assert group["params"][0].shape[0] == 5
    rec.densify_and_prune()  # no gradient recorded since: nothing densified (and nothing pruned here)
    assert rec.gaussians().num_gaussians == 5


def test_halving_matrix_and_half_geometry():
    x = torch.arange(10.0)
    torch.testing.assert_close(halving_matrix(10) @ x, x.reshape(5, 2).mean(1))  # even: 2-pixel means
    m = halving_matrix(9)
    ramp = 2.0 + 0.5 * torch.arange(9.0)
    centres = 2.0 * (torch.arange(5.0) - 2.0) + 4.0  # same centre, twice the pitch
    torch.testing.assert_close((m @ ramp)[1:-1], (2.0 + 0.5 * centres)[1:-1])  # a ramp is resampled exactly inside
    torch.testing.assert_close(m.sum(1), torch.ones(5))
    g = CTGeometry.parallel((9, 16, 16), (1.0, 0.5, 0.5), num_angles=5)
    h = half_geometry(g)
    assert h.volume_shape == (5, 8, 8) and h.voxel_size == (2.0, 1.0, 1.0) and h.det_shape == ((g.det_shape[0] + 1) // 2, (g.det_shape[1] + 1) // 2)


def test_the_half_resolution_render_is_the_full_render_at_half_resolution():
    """One rotated Gaussian (3-4 voxels, well inside a 36-voxel grid) rendered by the coarse stage on its
    half-resolution grid: each voxel within 5 % of the peak (3 % measured: the mean also samples the curvature) of
    the mean of the 2x2x2 full-resolution voxels it covers, and its sum, times 8 (voxels of 8 times the volume), the
    Gaussian's mass ``I (2 pi)^(3/2) s1 s2 s3`` (voxels), as the full grid's sum is."""
    from recon.coarse import HalfResolutionStage
    from medgmae.render import render_volume

    g = CTGeometry.parallel((36, 36, 36), 1.0, num_angles=4)
    stage = HalfResolutionStage(g, "torch", torch.zeros(4, *g.det_shape, dtype=torch.float64))
    means = torch.tensor([[17.8, 17.2, 18.3]], dtype=torch.float64)
    scales = torch.tensor([[3.0, 4.0, 3.5]], dtype=torch.float64)
    quats = torch.nn.functional.normalize(torch.tensor([[0.9, 0.2, -0.3, 0.25]], dtype=torch.float64), dim=-1)
    inten = torch.tensor([2.0], dtype=torch.float64)
    half = stage.render(means, scales, quats, inten, min_scale=0.3, cutoff=10.0)
    full = render_volume(means[None], scales[None], quats[None], inten[None], g.volume_shape, cutoff=10.0)[0]
    assert half.shape == (18, 18, 18)
    pooled = torch.nn.functional.avg_pool3d(full[None, None], 2)[0, 0]
    assert float((half - pooled).abs().max()) < 0.05 * 2.0
    mass = 2.0 * (2 * math.pi) ** 1.5 * float(scales.prod())
    assert float(full.sum()) == pytest.approx(mass, rel=1e-3)
    assert 8 * float(half.sum()) == pytest.approx(mass, rel=1e-3)


def test_3dgr_ct_short_run_improves_psnr_on_a_tiny_phantom():
    """200 iterations of the 3dgr-ct preset (first third at half resolution, two density-control rounds) from
    its own initialisation on a 24^3 phantom. 100 Gaussians: 3DGR-CT's scales are relative to the volume
    (0.15 / neighbours of the largest side), so on a volume this small only a sparse start has Gaussians of
    about a voxel; the published 50,000 would sit below a tenth of a voxel here."""
    ph = generate_phantom(0, shape=(24, 24, 24), spacing=(8.0, 8.0, 8.0), noise=False)
    vol = torch.from_numpy(hu_to_mu(ph.image).astype(np.float32)).permute(2, 1, 0).contiguous()
    g = CTGeometry.parallel(vol.shape, 1.0, num_angles=12)
    p = make_projector(g, "auto", "cpu")
    proj = p(vol)
    init, vs = init_3dgr_ct(fbp(proj, g, "hann"), 100)
    rec = GaussianReconstructor(p, proj, init, GaussianReconConfig.preset("3dgr-ct", 200, eval_every=50), reference=vol, value_scale=vs)
    start = psnr(rec.render().detach() * vs, vol)
    res = rec.run(progress=False)
    final = psnr(res.volume, vol)
    assert final > start + 0.2, (start, final)
    assert res.history[-1]["loss"] < 0.7 * res.history[0]["loss"]
    assert res.history[-1]["num_gaussians"] != init.num_gaussians  # density control ran


def test_sparse_start_grows_to_its_budget_and_improves():
    """The toolkit preset with sparse_start_growth: 40 Gaussians grow by about half every 10 iterations to the
    budget of 300 (never beyond) on a 20^3 phantom, and the reconstruction improves."""
    ph = generate_phantom(1, shape=(20, 20, 20), spacing=(9.0, 9.0, 9.0), noise=False)
    vol = torch.from_numpy(hu_to_mu(ph.image).astype(np.float32)).permute(2, 1, 0).contiguous()
    g = CTGeometry.parallel(vol.shape, 1.0, num_angles=12)
    p = make_projector(g, "auto", "cpu")
    proj = p(vol)
    gen = torch.Generator().manual_seed(0)
    means = 4 + 12 * torch.rand(1, 40, 3, generator=gen)
    init = Gaussians3D(means, torch.full((1, 40, 3), 2.5), torch.tensor([1.0, 0, 0, 0]).expand(1, 40, 4), torch.full((1, 40), 0.01))
    cfg = GaussianReconConfig.preset("toolkit", 120, eval_every=10, **sparse_start_growth(300))
    rec = GaussianReconstructor(p, proj, init, cfg, reference=vol)
    start = psnr(rec.render().detach() * rec.value_scale, vol)
    res = rec.run(progress=False)
    counts = [h["num_gaussians"] for h in res.history]
    assert counts[1] > 1.3 * 40 and max(counts) <= 300 and counts[-1] >= 250, counts
    assert psnr(res.volume, vol) > start + 3.0
    with pytest.raises(ValueError, match="budget"):
        sparse_start_growth(0)


class _Payload:
    """Unpickling this runs ``Path.touch(marker)``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_resume_states_refuse_pickled_code(tmp_path):
    bad = tmp_path / "recon_state.pt"
    torch.save({"kind": "recon-gaussians", "x": _Payload(tmp_path / "ran")}, bad)
    with pytest.raises(ValueError, match=r"recon_state\.pt: refused to load .*Unsupported global"):
        load_torch_file(bad)
    assert not (tmp_path / "ran").exists()
    with pytest.raises(FileNotFoundError, match="none.pt"):
        load_torch_file(tmp_path / "none.pt")
    # the payload is live: an unrestricted load would have run it
    torch.load(bad, weights_only=False)
    assert (tmp_path / "ran").exists()
    torch.save({"a": 1, "t": torch.ones(2), "rng": torch.Generator().get_state()}, tmp_path / "plain.pt")
    assert load_torch_file(tmp_path / "plain.pt")["a"] == 1


def test_toolkit_budget_and_cap():
    """One Gaussian per 8 voxels, rounded up, at least 20,000; the density cap ten times the start, at least 200,000."""
    from recon.presets import preset_init_settings, toolkit_budget, toolkit_cap

    assert toolkit_budget(112 * 128 * 160) == 286720 and toolkit_budget(32 * 64 * 64) == 20000
    assert toolkit_budget(160_001) == 20001 and toolkit_budget(1) == 20000
    assert preset_init_settings("toolkit", 8 * 30000 + 1)["num_gaussians"] == 30001
    assert preset_init_settings("toolkit")["num_gaussians"] == 20000
    assert preset_init_settings("3dgr-ct", 10**7)["num_gaussians"] == 50000  # the published count, whatever the volume
    assert toolkit_cap(20000) == {"max_gaussians": 200000} and toolkit_cap(286720) == {"max_gaussians": 2867200}
    with pytest.raises(ValueError, match="num_voxels"):
        toolkit_budget(0)


@pytest.mark.parametrize("field, value", [("coarse_iterations", 2.5), ("coarse_iterations", "5"),
                                          ("views_per_iteration", 2.5), ("views_per_iteration", 0),
                                          ("max_gaussians", 1e5 + 0.5), ("max_gaussians", 0), ("eval_every", 2.5),
                                          ("densify_every", 0), ("densify_until", -1), ("holdout_views", 1.5),
                                          ("holdout_patience", -2), ("checkpoint_every", "10")])  # fmt: skip
def test_counts_of_the_config_are_whole_numbers_named_when_not(field, value):
    from recon.presets import GaussianReconConfig

    given = {"holdout_views": 2} if field == "holdout_patience" else {}  # patience counts held-out evaluations
    with pytest.raises(ValueError, match=f"{field} must be a .*whole number.*, got {value!r}"):
        GaussianReconConfig(**given, **{field: value})
    assert getattr(GaussianReconConfig(**given, **{field: 4.0}), field) == 4
