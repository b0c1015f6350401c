"""3DGR-CT Gaussian reconstruction: beats FBP on sparse views, density control, checkpoint/resume."""

import math

import numpy as np
import pytest
import torch

from medgmae.data.phantom import generate_phantom
from medgmae.gaussians import Gaussians3D
from recon.fbp import fbp
from recon.gaussian_recon import GaussianReconConfig, GaussianReconstructor
from recon.geometry import CTGeometry
from recon.initialisation import fbp_init, hu_to_mu
from recon.init_3dgr import init_3dgr_ct
from medgmae.torch_files import load_torch_file
from recon.metrics import psnr, ssim
from recon.projectors import TorchProjector


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sparse_scan():
    """A 32^3 phantom (6 mm voxels: the whole abdomen) seen by 8 parallel-beam views."""
    ph = generate_phantom(0, shape=(32, 32, 32), spacing=(6.0, 6.0, 6.0), noise=False)
    vol = torch.from_numpy(hu_to_mu(ph.image).astype(np.float32)).permute(2, 1, 0).contiguous()
    g = CTGeometry.parallel(vol.shape, 1.0, num_angles=8)
    proj_op = TorchProjector(g, step=1.0)
    with torch.no_grad():
        proj = proj_op(vol)
    return g, proj_op, proj, vol


def test_gaussian_recon_beats_fbp_on_sparse_views(sparse_scan):
    """150 iterations from the FBP initialisation beat the best of the three FBP filters by > 1 dB. Density
    control is left off here (short runs lose ~1 dB to its perturbations; it is tested on its own below)."""
    g, proj_op, proj, vol = sparse_scan
    fbps = {f: fbp(proj, g, f) for f in ("ram-lak", "shepp-logan", "hann")}
    best_fbp = max(psnr(v, vol) for v in fbps.values())
    init = fbp_init(fbps["hann"], 300, seed=0)
    cfg = GaussianReconConfig(iterations=150, densify_from=10_000, eval_every=75, seed=0)
    rec = GaussianReconstructor(proj_op, proj, init, cfg, reference=vol)
    start = rec.evaluate()["psnr"]
    res = rec.run(progress=False)
    final = psnr(res.volume, vol)
    assert final > best_fbp + 1.0, (final, best_fbp, start)
    assert final > start + 5.0
    assert ssim(res.volume, vol) > max(ssim(v, vol) for v in fbps.values())
    assert res.history[-1]["iteration"] == 150 and res.history[-1]["psnr"] == pytest.approx(final, abs=1e-4)
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert torch.isfinite(res.gaussians.as_tensor()).all()


def _tiny_problem(seed=0):
    g = CTGeometry.parallel((8, 12, 12), 1.0, num_angles=6)
    z, y, x = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) - (n - 1) / 2 for n in g.volume_shape], indexing="ij")
    vol = ((z / 3) ** 2 + (y / 4) ** 2 + (x / 3.5) ** 2 < 1).float() * 0.02
    p = TorchProjector(g)
    proj = p(vol)
    return g, p, proj, vol


def test_density_control_clone_split_prune():
    """The drawn rule (``split_rule="sample"``): small Gaussians cloned, large ones split, tiny ones pruned."""
    g, p, proj, vol = _tiny_problem()
    means = torch.tensor([[[3.5, 5.5, 5.5], [4.0, 6.0, 6.0], [2.0, 2.0, 2.0], [5.0, 5.0, 5.0]]])
    scales = torch.tensor([[[0.8] * 3, [3.0] * 3, [1.0] * 3, [1.0] * 3]])
    quats = torch.tensor([[1.0, 0, 0, 0]]).expand(1, 4, 4).contiguous()
    inten = torch.tensor([[0.02, 0.02, 1e-6, 0.02]])
    cfg = GaussianReconConfig(iterations=10, densify_fraction=0.5, split_rule="sample", split_scale=2.0, prune_intensity=0.005,
                              min_scale=0.3)
    rec = GaussianReconstructor(p, proj, Gaussians3D(means, scales, quats, inten), cfg)
    rec.grad_accum = torch.tensor([5.0, 4.0, 0.0, 0.1])
    rec.grad_count = torch.ones(4)
    before = rec.params["intensities"].detach().clone()
    stats = rec.densify_and_prune()
    # top half by gradient: #0 (small: cloned) and #1 (large: split into two); #2 pruned (tiny intensity)
    assert stats == {"cloned": 1, "split": 1, "pruned": 1}
    out = rec.gaussians()
    assert out.num_gaussians == 4 - 1 - 1 + 1 + 2
    inten_after = rec.params["intensities"].detach()
    assert torch.isclose(inten_after[0], before[0] * 0.5)  # clone halves the original ...
    assert torch.isclose(inten_after[2], before[0] * 0.5)  # ... and the copy
    split_scales = out.scales[0, -2:]
    torch.testing.assert_close(split_scales, torch.full((2, 3), 3.0 / 1.6))
    # Adam moments follow the kept rows and start at zero for new ones
    for group in rec.optimizer.param_groups:
        assert group["params"][0] is rec.params[group["name"]]
    rec.run(progress=False)  # the optimiser keeps working on the new parameter set


def _resumable(preset, state_path=None, stop_at=None):
    """A 12-iteration run with density-control rounds after iterations 4 and 8; optionally interrupted."""
    g, p, proj, vol = _tiny_problem()
    f = fbp(proj, g)
    if preset == "toolkit":
        init, vs = fbp_init(f, 40, seed=0), None
        extra = dict(densify_from=4, densify_until=8, densify_fraction=0.25)
    else:  # every Gaussian is densified (threshold 0), half-resolution stage for 5 iterations
        init, vs = init_3dgr_ct(f, 40)
        extra = dict(densify_from=0, densify_until=12, grad_threshold=0.0, coarse_iterations=5)
    cfg = GaussianReconConfig.preset(preset, 12, densify_every=4, eval_every=3, checkpoint_every=3, views_per_iteration=3, seed=1, **extra)
    rec = GaussianReconstructor(p, proj, init, cfg, reference=vol, value_scale=vs)
    return rec, rec.run(checkpoint_path=state_path, progress=False, stop_at=stop_at)


@pytest.mark.parametrize("preset, stop", [("toolkit", 7), ("3dgr-ct", 7), ("3dgr-ct", 3)])
def test_checkpoint_resume_is_bit_exact_across_density_control(tmp_path, preset, stop):
    """A run interrupted after iteration 7 (inside the density-control window, after the round at 4 and before
    the one at 8), or, for 3DGR-CT, after iteration 3 (in its half-resolution stage, before the switch to full
    resolution after 5 and the round at 4), and resumed from its state file (loaded with weights_only=True) ends bit
    for bit where the uninterrupted run ends: parameters, Adam moments, number of Gaussians, history."""
    full_rec, full = _resumable(preset)
    ck = tmp_path / "state.pt"
    _resumable(preset, ck, stop_at=stop)
    state = load_torch_file(ck)
    since_round = stop - 4 if stop > 4 else stop  # the statistics restart at the round at 4
    assert state["iteration"] == stop and float(state["grad_count"].max()) == since_round
    resumed, _ = _resumable(preset, stop_at=0)
    resumed.load_state_dict(state)
    assert resumed.resumed == {"iteration": stop, "seconds_before": state["seconds"]}  # metrics.json's record, as is
    assert resumed.seconds == state["seconds"] > 0  # the time before the interruption carried on
    out = resumed.run(progress=False)
    assert out.seconds >= state["seconds"]
    assert out.gaussians.num_gaussians == full.gaussians.num_gaussians != 40
    for name in full_rec.params:
        assert torch.equal(resumed.params[name], full_rec.params[name]), name
    for a, b in zip(resumed.optimizer.param_groups, full_rec.optimizer.param_groups):
        sa, sb = resumed.optimizer.state[a["params"][0]], full_rec.optimizer.state[b["params"][0]]
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"]) and a["lr"] == b["lr"]
    assert torch.equal(out.volume, full.volume)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(out.history) == strip(full.history)
    assert [r["iteration"] for r in full.density_rounds] == [4, 8] and out.density_rounds == full.density_rounds
    with pytest.raises(ValueError, match="not a Gaussian reconstruction checkpoint"):
        resumed.load_state_dict({"kind": "medgmae"})
    with pytest.raises(ValueError, match="lacks"):
        resumed.load_state_dict({"kind": "recon-gaussians", "iteration": 3})


@pytest.mark.parametrize("preset,rule", [("toolkit", "sample"), ("toolkit", "moments"), ("3dgr-ct", None)])
def test_density_rounds_record_what_each_round_did(preset, rule):
    """``result.density_rounds`` holds one record per round whose counts account for the change in the number of
    Gaussians that round made (counted independently around each call) and whose ``num_gaussians`` is the count
    after it."""
    g, p, proj, vol = _tiny_problem()
    f = fbp(proj, g)
    extra = {"split_rule": rule, "densify_fraction": 0.3} if preset == "toolkit" else {"grad_threshold": 0.0}
    init, vs = (fbp_init(f, 40, seed=0), None) if preset == "toolkit" else init_3dgr_ct(f, 40)
    cfg = GaussianReconConfig.preset(preset, 13, densify_from=3, densify_until=12, densify_every=3, eval_every=13, seed=2, **extra)
    rec = GaussianReconstructor(p, proj, init, cfg, value_scale=vs)
    seen, call = [], rec.densify_and_prune

    def counted():
        before = rec.params["means"].shape[0]
        out = call()
        seen.append((rec.iteration, before, rec.params["means"].shape[0]))
        return out

    rec.densify_and_prune = counted
    rounds = rec.run(progress=False).density_rounds
    assert [r["iteration"] for r in rounds] == [3, 6, 9, 12] == [s[0] for s in seen]
    assert any(r["split"] + r["cloned"] > 0 for r in rounds)
    for r, (_, before, after) in zip(rounds, seen):
        assert r["num_gaussians"] == after
        assert after - before == r["cloned"] + r["split"] - r["pruned"], r


def test_resume_needs_the_density_statistics(tmp_path):
    """Negative control: resuming the toolkit run with the statistics zeroed (what an incomplete state gives)
    densifies other Gaussians, so the exactness test above can tell."""
    _, full = _resumable("toolkit")
    ck = tmp_path / "state.pt"
    _resumable("toolkit", ck, stop_at=7)
    state = load_torch_file(ck)
    state["grad_accum"].zero_()
    state["grad_count"].zero_()
    resumed, _ = _resumable("toolkit", stop_at=0)
    resumed.load_state_dict(state)
    assert not torch.equal(resumed.run(progress=False).volume, full.volume)


def test_a_round_trip_keeps_the_density_statistics_mid_interval(tmp_path):
    """A run stopped at iteration 7 (three iterations into the density-control interval, views sampled so that the
    accumulated gradient norms differ from the counts), saved to a file and restored into a fresh reconstructor:
    each statistic (the accumulated gradient norms and the counts) equals the stopped run's own, tensor for tensor."""
    stopped, _ = _resumable("toolkit", tmp_path / "state.pt", stop_at=7)
    accum, count = stopped.grad_accum.clone(), stopped.grad_count.clone()
    assert float(count.max()) == 3 and not torch.equal(accum, count)
    resumed, _ = _resumable("toolkit", stop_at=0)
    resumed.load_state_dict(load_torch_file(tmp_path / "state.pt"))
    assert resumed.iteration == stopped.iteration == 7
    assert torch.equal(resumed.grad_accum, accum) and torch.equal(resumed.grad_count, count)
    assert resumed.grad_accum.dtype == accum.dtype and resumed.grad_count.dtype == count.dtype


def test_tv_and_coarse_phase_change_the_loss():
    g, p, proj, vol = _tiny_problem()
    init = fbp_init(fbp(proj, g), 30, seed=0)
    plain = GaussianReconstructor(p, proj, init, GaussianReconConfig(iterations=1))
    tv = GaussianReconstructor(p, proj, init, GaussianReconConfig(iterations=1, tv_weight=0.1))
    coarse = GaussianReconstructor(p, proj, init, GaussianReconConfig(iterations=1, coarse_iterations=1))
    v = plain.render().detach()
    with torch.no_grad():
        l0, l1, l2 = float(plain.loss(v)), float(tv.loss(v)), float(coarse.loss(v))
    tv_term = sum(float(v.diff(dim=d).abs().mean()) for d in range(3))
    assert l1 == pytest.approx(l0 + 0.1 * tv_term, rel=1e-5)
    assert l2 != pytest.approx(l0, rel=1e-3)


@pytest.mark.parametrize("form", ["mse", "relative"])
def test_the_loss_is_the_mean_squared_projection_residual(form):
    """All views, no hold-out, no TV: ``loss`` of a volume (``value_scale`` units) is the mean of the squared residual
    of its projection (the projector called directly) against the measured projections, in float64: over
    ``value_scale ** 2`` (``mse``) or over the measured projections' mean square (``relative``)."""
    g, p, proj, vol = _tiny_problem()
    init = fbp_init(fbp(proj, g), 30, seed=0)
    scale = 0.05
    rec = GaussianReconstructor(p, proj, init, GaussianReconConfig(iterations=1, loss=form), value_scale=scale)
    v = rec.render().detach()
    with torch.no_grad():
        got = float(rec.loss(v))
    residual = p(v * scale).double() - proj.double()
    assert float(residual.abs().max()) > 3 * float(residual.abs().mean())  # uneven: |r| and r**2 means differ
    expected = residual.square().mean() / (scale**2 if form == "mse" else proj.double().square().mean())
    assert got == pytest.approx(float(expected), rel=1e-4)


def test_reconstructor_input_errors():
    g, p, proj, vol = _tiny_problem()
    init = fbp_init(fbp(proj, g), 10, seed=0)
    with pytest.raises(ValueError, match="expects"):
        GaussianReconstructor(p, proj[:, :3], init)
    bad = proj.clone()
    bad[0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        GaussianReconstructor(p, bad, init)
    with pytest.raises(ValueError, match="reference"):
        GaussianReconstructor(p, proj, init, reference=vol[:4])
    with pytest.raises(ValueError, match="lr_means"):
        GaussianReconConfig(lr_means=0)


def test_projections_with_a_batch_axis_are_refused():
    """The geometry's shape check lets ``(B, V, rows, cols)`` through: ``(1, V, rows, cols)`` with held-out views
    ended in an ``IndexError`` and ``(2, V, rows, cols)`` was fitted against a broadcast target without a word."""
    g, p, proj, vol = _tiny_problem()
    init = fbp_init(fbp(proj, g), 10, seed=0)
    expected = r"\(views, rows, cols\) = \(6, 8, 17\), got shape "
    assert g.proj_shape == (6, 8, 17)
    with pytest.raises(ValueError, match=expected + r"\(1, 6, 8, 17\)"):
        GaussianReconstructor(p, proj[None], init, GaussianReconConfig(iterations=1, holdout_views=2))
    with pytest.raises(ValueError, match=expected + r"\(2, 6, 8, 17\)"):
        GaussianReconstructor(p, torch.stack([proj, proj]), init, GaussianReconConfig(iterations=1))
    with pytest.raises(ValueError, match=expected + r"\(8, 17\)"):
        GaussianReconstructor(p, proj[0], init, GaussianReconConfig(iterations=1))


def test_numpy_inputs_are_taken_and_a_start_off_the_grid_is_refused_or_warned_about(caplog):
    """From a notebook: NumPy projections and reference ended in ``TypeError: isfinite()`` / ``AttributeError``; a
    start whose every centre lies outside the volume (Gaussians in world millimetres) ran to an all-zero result, and
    one built on a permuted grid to a worse one, without a word; ``device='cuda'`` without CUDA was torch's
    ``AssertionError``."""
    import logging

    g, p, proj, vol = _tiny_problem()
    init = fbp_init(fbp(proj, g), 40, seed=0)
    cfg = GaussianReconConfig(iterations=1)
    rec = GaussianReconstructor(p, proj.numpy(), init, cfg, reference=vol.numpy())
    assert isinstance(rec.proj, torch.Tensor) and rec.reference.shape == vol.shape
    far = Gaussians3D(init.means + 500.0, init.scales, init.quats, init.intensities)
    with pytest.raises(ValueError, match=r"none of the \d+ start Gaussians lies in the volume: .*voxel indices \(z, y, x\)"):
        GaussianReconstructor(p, proj, far, cfg)
    half = init.means.clone()
    half[0, ::2, 0] += 100.0  # every other centre off the grid along z
    with caplog.at_level(logging.WARNING, logger="recon"):
        GaussianReconstructor(p, proj, Gaussians3D(half, init.scales, init.quats, init.intensities), cfg)
    assert any("50 % of the" in r.getMessage() and "outside the volume" in r.getMessage() for r in caplog.records)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda' was requested but CUDA is not available on this machine"):
            GaussianReconstructor(p, proj, init, cfg, device="cuda")
    with pytest.raises(TypeError, match="projections must be a tensor or a NumPy array, got str"):
        GaussianReconstructor(p, "proj.npy", init, cfg)


def test_a_projector_and_the_fbp_start_take_numpy_arrays():
    """``Projector.forward`` / ``adjoint`` of a NumPy array ended in ``AttributeError: ... 'dim'`` and ``fbp_init``
    called a NumPy (D, H, W) array not a (D, H, W) tensor; they now give what the tensor gives."""
    g, p, proj, vol = _tiny_problem()
    assert torch.equal(p.forward(vol.numpy()), p.forward(vol)) and torch.equal(p.adjoint(proj.numpy()), p.adjoint(proj))
    f = fbp(proj, g)
    a, b = fbp_init(f.numpy(), 40, seed=0), fbp_init(f, 40, seed=0)
    assert torch.equal(a.means, b.means) and torch.equal(a.intensities, b.intensities)
    with pytest.raises(ValueError, match=r"must be a \(D, H, W\) tensor, got shape \(12, 12\)"):
        fbp_init(f[0], 40)
