"""Held-out views (recon.holdout): the split, the fit never sees them, the returned Gaussians are those of the best
evaluation (checked against a run stopped there), patience, exact resume, and that the held-out error finds the
PSNR peak of a noisy scan."""

import math

import numpy as np
import pytest
import torch

from medgmae.data.phantom import generate_phantom
from medgmae.torch_files import load_torch_file
from recon.fbp import fbp
from recon.gaussian_recon import GaussianReconConfig, GaussianReconstructor
from recon.geometry import CTGeometry
from recon.holdout import HeldOutViews, holdout_split
from recon.initialisation import fbp_init, hu_to_mu
from recon.metrics import psnr
from recon.projectors import TorchProjector

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("arc", [180.0, 360.0, 200.0])
def test_split_spreads_the_held_out_views_over_the_directions(arc):
    """Every view is fitted or held out, once; the held-out directions (angle modulo 180 degrees) are distinct and,
    on 180- and 360-degree scans, spread as evenly as the directions allow (gaps differ by at most one step)."""
    for views in range(2, 41):
        angles = np.deg2rad(arc) * np.arange(views) / views
        directions = np.round(np.mod(angles, np.pi), 9) % np.pi
        distinct = np.unique(directions)
        step = np.diff(np.append(distinct, distinct[0] + np.pi)).max()
        for held in range(1, views // 2 + 1):
            fit, out = holdout_split(angles, held)
            assert len(out) == held and len(fit) == views - held
            assert sorted(fit.tolist() + out.tolist()) == list(range(views))
            d = np.sort(directions[out.numpy()])
            if held <= len(distinct):
                assert len(np.unique(d)) == held, (arc, views, held, out)
            gaps = np.diff(np.append(d, d[0] + np.pi))
            if arc in (180.0, 360.0):  # directions evenly spaced (a 200-degree arc covers them unevenly)
                assert gaps.max() - gaps.min() <= step + 1e-6, (arc, views, held, out)
    for n, held in ((10, 0), (10, 6), (1, 1)):
        with pytest.raises(ValueError, match="holdout views"):
            holdout_split(np.arange(n) * 0.1, held)


def test_split_of_a_full_rotation_keeps_opposite_views_apart():
    """20 views over 360 degrees, 2 held out: two directions 90 degrees apart, each opposite view still fitted
    (holding out views 5 and 15, as an even spread over the indices would, removes the 90-degree direction)."""
    angles = np.deg2rad(360.0) * np.arange(20) / 20
    fit, out = holdout_split(angles, 2)
    assert out.tolist() == [12, 17]  # 216 and 306 degrees: directions 36 and 126
    assert {2, 7} <= set(fit.tolist())
    assert holdout_split(angles[:10] / 2, 2)[1].tolist() == [2, 7]  # 180 degrees: evenly over the indices


def test_best_state_and_patience_bookkeeping():
    h = HeldOutViews([0.1 * i for i in range(10)], 2, patience=2)
    params = {"means": torch.zeros(3, 3)}
    assert h.update(5, 1.0, params) and h.best_iteration == 5
    params["means"] += 1  # the copy must not follow the live parameters
    assert not h.update(10, 1.5, params) and not h.stopped
    assert torch.equal(h.best_params["means"], torch.zeros(3, 3))
    assert h.update(15, 0.5, params) and h.waiting == 0  # a better one resets the wait
    assert not h.update(20, 0.5, params) and not h.stopped  # a tie is no improvement
    assert not h.update(25, 0.7, params) and h.stopped and h.best_iteration == 15
    with pytest.raises(FloatingPointError):
        h.update(30, math.nan, params)
    with pytest.raises(ValueError, match="patience"):
        HeldOutViews([0.1 * i for i in range(10)], 2, patience=-1)


ITERATIONS = 60


def _noisy_scan(noise_seed=0, photons=1e3):
    """A 16^3 phantom of 12 mm voxels, 12 parallel views, Poisson noise: the Gaussians overfit within ~30 iterations."""
    ph = generate_phantom(0, shape=(16, 16, 16), spacing=(12.0, 12.0, 12.0), noise=False)
    vol = torch.from_numpy(hu_to_mu(ph.image).astype(np.float32)).permute(2, 1, 0).contiguous()
    g = CTGeometry.parallel(vol.shape, 1.0, num_angles=12)
    p = TorchProjector(g)
    counts = torch.poisson(photons * torch.exp(-p(vol)), generator=torch.Generator().manual_seed(noise_seed))
    return g, p, -torch.log(counts.clamp_min(1) / photons), vol


def _run(scan, iterations=ITERATIONS, stop_at=None, state=None, **settings):
    """The toolkit optimiser from the FBP of the fitted views (every view without held-out ones)."""
    g, p, proj, vol = scan
    cfg = GaussianReconConfig.preset("toolkit", iterations, eval_every=5, seed=0, **settings)
    fit = holdout_split(g.angles, settings["holdout_views"])[0] if settings.get("holdout_views") else torch.arange(g.num_views)
    init = fbp_init(fbp(proj[fit], g.select_views(fit.tolist())), 600, seed=0)
    rec = GaussianReconstructor(p, proj, init, cfg, reference=vol)
    if state is not None:
        rec.load_state_dict(state)
    return rec, rec.run(progress=False, stop_at=stop_at)


@pytest.fixture(scope="module")
def scan():
    return _noisy_scan()


def test_the_fit_never_sees_the_held_out_views(scan):
    """Replacing the measurements of the held-out views changes the held-out errors but not one bit of the fit;
    without held-out views the same replacement changes the fit (negative control)."""
    g, p, proj, vol = scan
    _, held = holdout_split(g.angles, 2)
    other = proj.clone()
    other[held] = other[held].flip(-1) * 1.5
    a, ra = _run(scan, 12, holdout_views=2)
    b, rb = _run((g, p, other, vol), 12, holdout_views=2)
    for name in a.params:
        assert torch.equal(a.params[name], b.params[name]), name
    assert [r["holdout_error"] for r in ra.history] != [r["holdout_error"] for r in rb.history]
    c, _ = _run(scan, 12)
    d, _ = _run((g, p, other, vol), 12)
    assert not torch.equal(c.params["means"], d.params["means"])


def test_the_result_is_the_best_evaluation(scan):
    """The returned volume is bit for bit that of a run stopped at the evaluation with the lowest held-out error,
    which lies inside the run here (the scan is noisy enough to overfit)."""
    rec, res = _run(scan, holdout_views=2)
    errors = {r["iteration"]: r["holdout_error"] for r in res.history}
    best = min(errors, key=errors.get)
    assert res.best_iteration == best < res.iterations == ITERATIONS
    stopped, at_best = _run(scan, holdout_views=2, stop_at=best)
    assert torch.equal(res.volume, stopped.render().detach() * stopped.value_scale)
    assert res.gaussians.num_gaussians == at_best.gaussians.num_gaussians
    assert not torch.equal(res.volume, rec.render().detach() * rec.value_scale)  # the run went on past it


def test_patience_stops_the_run(scan):
    """With patience 2 the run ends two evaluations after its best, with the history of the full run up to there."""
    _, full = _run(scan, holdout_views=2)
    _, short = _run(scan, holdout_views=2, holdout_patience=2)
    assert short.best_iteration == full.best_iteration
    assert short.iterations == full.best_iteration + 2 * 5 < ITERATIONS
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(short.history) == strip(full.history)[: len(short.history)]
    assert torch.equal(short.volume, full.volume)


def test_resume_keeps_the_best_and_the_patience(scan, tmp_path):
    """Interrupted after the best evaluation (one evaluation into the wait) and resumed from the saved state, the
    run stops where the uninterrupted one stops and returns the same volume; a resumed finished run does nothing."""
    _, full = _run(scan, holdout_views=2, holdout_patience=3)
    cut = full.best_iteration + 5
    rec, _ = _run(scan, holdout_views=2, holdout_patience=3, stop_at=cut)
    rec.save_checkpoint(tmp_path / "state.pt")
    state = load_torch_file(tmp_path / "state.pt")
    assert state["holdout"]["best_iteration"] == full.best_iteration and state["holdout"]["waiting"] == 1
    resumed, out = _run(scan, holdout_views=2, holdout_patience=3, stop_at=0, state=state)
    out = resumed.run(progress=False)
    assert out.iterations == full.iterations and out.best_iteration == full.best_iteration
    assert torch.equal(out.volume, full.volume)
    again = resumed.run(progress=False)
    assert again.iterations == full.iterations and torch.equal(again.volume, full.volume)
    with pytest.raises(ValueError, match="held out views"):
        _run(scan, stop_at=0, state=state)
    with pytest.raises(ValueError, match="patience"):
        _run(scan, holdout_views=2, holdout_patience=4, stop_at=0, state=state)


def test_the_held_out_error_finds_the_psnr_peak():
    """Over 6 noise draws, the Gaussians chosen by the held-out error (2 of 12 views) are within 0.6 dB of the best
    PSNR any evaluation reached and on average 0.2 dB above the last evaluation's, which has fitted the noise
    (measured: 0.18-0.51 dB above it, 0.0-0.52 dB below the peak)."""
    gains = []
    for seed in range(6):
        scan = _noisy_scan(seed)
        _, res = _run(scan, holdout_views=2)
        peak = max(r["psnr"] for r in res.history)
        chosen = psnr(res.volume, scan[3])
        assert chosen > peak - 0.6, (seed, chosen, peak)
        gains.append(chosen - res.history[-1]["psnr"])
    assert sum(gains) / len(gains) > 0.2, gains


def test_settings_are_checked():
    with pytest.raises(ValueError, match="holdout_patience needs"):
        GaussianReconConfig(holdout_patience=2)
    with pytest.raises(ValueError, match=">= 0"):
        GaussianReconConfig(holdout_views=-1)


def test_a_slow_run_into_a_log_prints_between_evaluations_with_the_time_left(scan, capsys, monkeypatch):
    """Into a log, a run slower than LINE_SECONDS per line prints its loss between evaluations too, each line with
    the time left (none on the last)."""
    import medgmae.terminal as terminal

    monkeypatch.setattr(terminal, "LINE_SECONDS", 0.0)
    g, p, proj, vol = scan
    cfg = GaussianReconConfig.preset("toolkit", 4, eval_every=2, seed=0)
    rec = GaussianReconstructor(p, proj, fbp_init(fbp(proj, g), 300, seed=0), cfg, reference=vol)
    capsys.readouterr()
    rec.run(progress="lines")
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines] == [f"iteration {i}/4" for i in (1, 2, 3, 4)], lines
    assert "psnr" not in lines[0] and "psnr" in lines[1] and lines[0].split(": ")[1].startswith("loss ")
    assert all(" left)" in ln for ln in lines[:3]) and " left)" not in lines[3], lines


def test_the_time_left_in_a_half_resolution_stage_is_the_stages(scan, capsys, monkeypatch):
    """The half-resolution stage's iterations are several times faster than the rest: its lines give the time left
    of the stage, and the full-resolution lines a pace of their own (a 150-iteration run said 90 s left at
    iteration 25 and ran 300 s more)."""
    import medgmae.terminal as terminal

    monkeypatch.setattr(terminal, "LINE_SECONDS", 0.0)
    g, p, proj, vol = scan
    cfg = GaussianReconConfig.preset("toolkit", 6, eval_every=3, seed=0, coarse_iterations=3, coarse_mode="half")
    rec = GaussianReconstructor(p, proj, fbp_init(fbp(proj, g), 300, seed=0), cfg, reference=vol)
    capsys.readouterr()
    rec.run(progress="lines")
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines] == [f"iteration {i}/6" for i in range(1, 7)], lines
    assert all(ln.endswith(" left of the half-resolution stage)") for ln in lines[:2]), lines
    assert all("half-resolution" not in ln for ln in lines[2:]) and all(" left)" in ln for ln in lines[3:5]), lines


def test_pace_gives_the_time_left_from_the_steps_so_far(monkeypatch):
    import medgmae.terminal as terminal

    now = [100.0]
    monkeypatch.setattr(terminal.time, "perf_counter", lambda: now[0])
    pace = terminal.Pace(first=10, stop=110)
    assert pace.left(10) == ""  # nothing ran yet
    now[0] = 130.0  # 30 s for 20 steps: 80 more take 120 s
    assert pace.left(30) == ", about 2.0 min left" and pace.left(110) == ""
    assert pace.quiet_for() == 30.0
    pace.said()
    assert pace.quiet_for() == 0.0


def test_a_run_into_a_captured_log_prints_lines_not_a_bar(scan, capsys, monkeypatch):
    """With stderr captured (a batch job's log) the run prints one line per evaluation, with the history's values,
    and draws no bar; on a terminal it draws the bar and prints no lines, unless told to print lines."""
    import medgmae.terminal as terminal

    g, p, proj, vol = scan
    cfg = GaussianReconConfig.preset("toolkit", 10, eval_every=5, seed=0)
    rec = GaussianReconstructor(p, proj, fbp_init(fbp(proj, g), 300, seed=0), cfg, reference=vol)
    capsys.readouterr()
    rec.run(progress=True, stop_at=10)
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["iteration 5/10", "iteration 10/10"] and "\r" not in err, (out, err)
    assert f"psnr {rec.history[-1]['psnr']:.4g}" in lines[-1]
    monkeypatch.setattr(terminal, "progress_bars_shown", lambda: True)
    rec2 = GaussianReconstructor(p, proj, fbp_init(fbp(proj, g), 300, seed=0), cfg, reference=vol)
    rec2.run(progress=True, stop_at=5)
    out, err = capsys.readouterr()
    assert out == "" and "Gaussian recon" in err
    rec2.run(progress="lines", stop_at=10)  # --no-progress on a terminal: no bar, the lines
    out, err = capsys.readouterr()
    assert out.startswith("iteration 10/10:") and "Gaussian recon" not in err, (out, err)
    rec2.run(progress=False)
    assert capsys.readouterr() == ("", "")
