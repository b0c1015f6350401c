"""The pipeline contract of zero-shot inference: what the decoder is fed, and the exact way back (the files
inference writes, and what it says of them: test_zeroshot_inference.py; the inputs it refuses:
test_zeroshot_inputs.py).

Scans are sampled from analytic functions of world coordinates on grids with RAS, LPS and oblique affines and
anisotropic spacing, so every expectation is computed independently of the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medgmae.gaussians import Gaussians3D
from medgmae.rotations import covariance_matrices
from medgmae.zeroshot import zero_shot_gaussians

from zeroshot_helpers import (
    Probe as _Probe,
    SHAPE,
    SPACING,
    SPEC,
    blob_hu as _blob_hu,
    rotation as _rot,
    scan_affine as _affine,
    scan_centre as _centre,
    world_points as _world_points,
)


@pytest.mark.parametrize("kind", ["ras", "lps", "oblique"])
def test_decoder_always_receives_ras_windows_at_the_model_spacing(kind):
    affine = _affine(kind)
    centre = _centre(affine)
    scan = _blob_hu(_world_points(affine, SHAPE), centre).astype(np.float32)
    probe = _Probe()
    grad = []
    decode = lambda windows, affines: (grad.append(torch.is_grad_enabled()), probe.decode(windows, affines))[1]  # noqa: E731
    zero_shot_gaussians(torch.from_numpy(scan).requires_grad_(), affine, probe, spec=SPEC, overlap=4, decode=decode)
    assert probe.windows and grad and not any(grad)  # inference: no autograd graph, whatever the decoder or input
    inv_scan = np.linalg.inv(affine)
    checked = 0
    for win, waff in zip(probe.windows, probe.affines):
        lin = waff[:3, :3]
        # RAS at the model's spacing: columns of length 2 mm, each pointing along +x, +y, +z (up to the scan's
        # obliquity, which MONAI's Orientation/Spacing keep)
        np.testing.assert_allclose(np.linalg.norm(lin, axis=0), 2.0, rtol=1e-5)
        assert all(np.argmax(np.abs(lin[:, c])) == c and lin[c, c] > 0 for c in range(3)), lin
        # the window's content is the scan at the world points the window claims (independent analytic value)
        pts = _world_points(waff, win.shape)
        idx = (pts - affine[:3, 3]) @ inv_scan[:3, :3].T
        inside = np.all((idx >= 1) & (idx <= np.array(SHAPE) - 2), -1)
        expected = SPEC.window(_blob_hu(pts, centre))
        got = win.numpy()
        assert np.abs(got[inside] - expected[inside]).max() < 0.03
        checked += int(inside.sum())
    assert checked > 1000
    if kind != "oblique":  # the bright blob is superior / anterior / right: high indices along all three axes
        full = max(probe.windows, key=lambda w: float(w.max()))
        peak = np.unravel_index(int(full.argmax()), full.shape)
        waff = probe.affines[[float(w.max()) for w in probe.windows].index(float(full.max()))]
        world = waff[:3, :3] @ np.array(peak) + waff[:3, 3]
        np.testing.assert_allclose(world, centre + [8.0, 5.0, 12.0], atol=2.5)


def _true_gaussians(affine: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """World-frame centres inside the scan and random covariances (3-9 mm scales, random rotations)."""
    rng = np.random.default_rng(seed)
    idx = rng.uniform(2, np.array(SHAPE) - 3, size=(k, 3))
    means = idx @ affine[:3, :3].T + affine[:3, 3]
    covs = []
    for _ in range(k):
        r = _rot(*rng.uniform(-np.pi, np.pi, 3))
        covs.append(r @ np.diag(rng.uniform(3, 9, 3) ** 2) @ r.T)
    return means, np.stack(covs)


def _as_gaussians(means: np.ndarray, covs: np.ndarray) -> Gaussians3D:
    evals, evecs = np.linalg.eigh(covs)
    evecs[..., 2] *= np.sign(np.linalg.det(evecs))[:, None]
    from medgmae.rotations import rotation_matrix_to_quaternion

    q = rotation_matrix_to_quaternion(torch.from_numpy(evecs))
    return Gaussians3D(torch.from_numpy(means)[None], torch.from_numpy(np.sqrt(evals))[None], q[None],
                       torch.ones(1, len(means), dtype=torch.float64))  # fmt: skip


@pytest.mark.parametrize("kind,seed", [("ras", 0), ("lps", 1), ("oblique", 2), ("oblique", 3)])
def test_exact_round_trip_with_an_oracle_decoder(kind, seed):
    affine = _affine(kind)
    means, covs = _true_gaussians(affine, 40, seed)
    truth = _as_gaussians(means, covs)
    inv = torch.from_numpy(np.linalg.inv(affine))
    # the scan: the true Gaussians rendered on its (non-identity, anisotropic) grid, in HU
    scan = (truth.transformed(inv[:3, :3], inv[:3, 3]).to(torch.float32).render(SHAPE)[0] * 300.0 - 100.0).numpy()

    def oracle(windows, win_affines):
        out = []
        for waff in win_affines:  # world -> window voxels -> window's normalised frame
            inv = torch.from_numpy(np.linalg.inv(waff))
            out.append(truth.transformed(inv[:3, :3], inv[:3, 3]).to_normalized(SPEC.input_size))
        return Gaussians3D.cat(out, dim=0)

    res = zero_shot_gaussians(scan, affine, _Probe(), spec=SPEC, overlap=6, decode=oracle, min_intensity=0.5)
    assert res.world.num_gaussians == len(means)  # each once: the window owning its centre keeps it
    order = np.lexsort(res.world.means[0].numpy().T)
    np.testing.assert_allclose(res.world.means[0].numpy()[order], means[np.lexsort(means.T)], atol=1e-4)
    got_cov = covariance_matrices(res.world.scales, res.world.quats)[0].numpy()[order]
    want = covs[np.lexsort(means.T)]
    assert np.abs(got_cov - want).max() / np.abs(want).max() < 1e-4
    # the scan's voxel frame: A^-1 applied to centres and covariances
    inv = np.linalg.inv(affine)
    vox_means = means @ inv[:3, :3].T + inv[:3, 3]
    vorder = np.lexsort(res.voxel.means[0].numpy().T)
    np.testing.assert_allclose(res.voxel.means[0].numpy()[vorder], vox_means[np.lexsort(vox_means.T)], atol=1e-4)
    vcov = covariance_matrices(res.voxel.scales, res.voxel.quats)[0].numpy()[vorder]
    want_v = np.einsum("ij,kjl,ml->kim", inv[:3, :3], covs, inv[:3, :3])[np.lexsort(vox_means.T)]
    assert np.abs(vcov - want_v).max() / np.abs(want_v).max() < 1e-4


def test_gaussians_centred_past_the_scans_edge_voxels_are_not_kept():
    """A scan already RAS at the model's 2 mm (its prepared grid is its own): an oracle decoder gives every window
    Gaussians centred within the outer half of the first and last voxels of each axis (kept, each once) and just
    beyond those voxels' outer faces, outside the scan (dropped: no window owns them)."""
    shape = (40, 30, 26)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-20.0, 35.0, -110.0]
    last = np.array(shape) - 1.0
    inside = np.array([[last[0] + 0.4, 10, 10], [-0.4, 12, 8], [20, last[1] + 0.45, 13], [5, 5, last[2] + 0.3]])
    outside = np.array([[last[0] + 0.6, 10, 10], [-0.6, 12, 8], [20, last[1] + 0.55, 13], [5, 5, last[2] + 0.9]])
    idx = np.concatenate([inside, outside])
    means = idx @ affine[:3, :3].T + affine[:3, 3]
    truth = _as_gaussians(means, np.stack([np.eye(3) * 9.0] * len(idx)))
    scan = np.random.default_rng(0).normal(0, 100, shape).astype(np.float32)

    def oracle(windows, win_affines):
        out = []
        for waff in win_affines:
            inv = torch.from_numpy(np.linalg.inv(waff))
            out.append(truth.transformed(inv[:3, :3], inv[:3, 3]).to_normalized(SPEC.input_size))
        return Gaussians3D.cat(out, dim=0)

    res = zero_shot_gaussians(scan, affine, _Probe(), spec=SPEC, overlap=6, decode=oracle)
    got = res.voxel.means[0].numpy()
    np.testing.assert_allclose(got[np.lexsort(got.T)], inside[np.lexsort(inside.T)], atol=1e-4)


def test_a_scan_much_smaller_than_the_window_is_warned_about(caplog):
    """A 12 x 12 x 4 scan at 2 mm (the model's spacing) fills 12 x 12 x 4 of the 24^3 window: 1 - 0.5 * 0.5 / 6 =
    96 % padding, warned about with the number of Gaussians kept (a probe placing its one Gaussian in the scan's
    corner of the window: one); with none kept (the window's centre, outside the scan) the result says it instead
    of a warning, for the consumers' refusal; the 40 x 30 x 22 scan at 1.2-3.1 mm is not warned about."""
    import logging

    class _CornerProbe(_Probe):
        def decode(self, windows, affines):
            g = super().decode(windows, affines)
            return Gaussians3D(torch.full_like(g.means, 0.1), g.scales, g.quats, g.intensities)

    small, affine = np.zeros((12, 12, 4), np.float32), np.diag([2.0, 2.0, 2.0, 1.0])
    padded = "the scan is 12x12x4 voxels at the model's 2x2x2 mm, smaller than its 24x24x24 window: 96 % of the window is padding with air"
    probe = _CornerProbe()
    with caplog.at_level(logging.WARNING, logger="medgmae.zeroshot"):
        res = zero_shot_gaussians(small, affine, probe, spec=SPEC, decode=probe.decode)
    assert res.voxel.num_gaussians == 1
    assert f"{padded}, and only 1 of the decoder's Gaussians lie in the scan" in caplog.text
    caplog.clear()
    probe = _Probe()
    with caplog.at_level(logging.WARNING, logger="medgmae.zeroshot"):
        res = zero_shot_gaussians(small, affine, probe, spec=SPEC, decode=probe.decode)
        assert res.voxel.num_gaussians == 0 and "padding" not in caplog.text  # said once, by the refusal
    assert res.no_gaussians_reason() == f"{padded}; give a scan of the field of view the model was pre-trained on"
    with caplog.at_level(logging.WARNING, logger="medgmae.zeroshot"):
        zero_shot_gaussians(np.zeros(SHAPE, np.float32), np.diag([*SPACING, 1.0]), probe, spec=SPEC, decode=probe.decode)
    assert "padding" not in caplog.text


def test_the_number_of_windows_is_logged_before_they_are_decoded(caplog):
    """A clinical scan with a large overlap can take thousands of windows: how many is said before decoding starts
    (the summary after it was the first line), and it is the number the decoder then receives."""
    import logging

    affine = _affine("ras")
    scan = _blob_hu(_world_points(affine, SHAPE), _centre(affine)).astype(np.float32)
    probe = _Probe()
    with caplog.at_level(logging.INFO, logger="medgmae"):
        zero_shot_gaussians(scan, affine, probe, spec=SPEC, overlap=4, batch_size=3, decode=probe.decode)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("zero-shot:")]
    assert said[0].startswith(f"zero-shot: decoding {len(probe.windows)} windows of ") and said[0].endswith(", 3 per call")
    assert "Gaussians from" in said[1] and len(probe.windows) > 3


def test_a_long_decoding_logs_lines_where_no_bar_shows_it(caplog, monkeypatch):
    """Into a log (no bar) the windows decoded so far are logged a line a minute (here at every call); on a
    terminal the bar alone shows them."""
    import logging
    import re

    import medgmae.terminal as terminal

    monkeypatch.setattr(terminal, "LINE_SECONDS", 0.0)
    affine = _affine("ras")
    scan = _blob_hu(_world_points(affine, SHAPE), _centre(affine)).astype(np.float32)
    for shown in (False, True):
        monkeypatch.setattr(terminal, "progress_bars_shown", lambda: shown)
        caplog.clear()
        probe = _Probe()
        with caplog.at_level(logging.INFO, logger="medgmae"):
            zero_shot_gaussians(scan, affine, probe, spec=SPEC, overlap=4, batch_size=3, decode=probe.decode)
        n = len(probe.windows)
        lines = [r.getMessage() for r in caplog.records if re.match(r"zero-shot: \d+/", r.getMessage())]
        expected = [f"zero-shot: {k}/{n} windows" for k in range(3, n, 3)]
        assert [ln.split(",")[0] for ln in lines] == ([] if shown else expected) and (shown or expected), lines
