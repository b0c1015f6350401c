"""The pipeline contract of zero-shot inference: what the decoder is fed, and the exact way back (the files
inference writes, and what it says of them: test_zeroshot_inference.py).

Scans are sampled from analytic functions of world coordinates on grids with RAS, LPS and oblique affines and
anisotropic spacing, so every expectation is computed independently of the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medgmae.gaussians import Gaussians3D
from medgmae.rotations import covariance_matrices
from medgmae.preprocessing import PreprocessingSpec
from medgmae.zeroshot import zero_shot_gaussians

SPEC = PreprocessingSpec(spacing=2.0, input_size=24, patch_size=4)
SHAPE = (40, 30, 22)
SPACING = np.array([1.2, 1.7, 3.1])


def _rot(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _affine(kind: str) -> np.ndarray:
    """index -> RAS world: RAS-ordered, LPS-ordered (i towards the left, j posterior) or oblique (rotated ~17 deg)."""
    a = np.eye(4)
    direction = {"ras": np.eye(3), "lps": np.diag([-1.0, -1.0, 1.0]), "oblique": _rot(0.3, -0.2, 0.25)}[kind]
    a[:3, :3] = direction * SPACING
    a[:3, 3] = [-20.0, 35.0, -110.0]
    return a


def _world_points(affine: np.ndarray, shape) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    return (idx @ affine[:3, :3].T + affine[:3, 3]).reshape(*shape, 3)


def _centre(affine: np.ndarray) -> np.ndarray:
    return affine[:3, :3] @ ((np.array(SHAPE) - 1) / 2.0) + affine[:3, 3]


def _blob_hu(points: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Water background with a bright blob 8 mm to the right, 5 mm anterior and 12 mm superior of the centre."""
    d = points - (centre + np.array([8.0, 5.0, 12.0]))
    return 200.0 * np.exp(-(d**2).sum(-1) / (2 * 7.0**2))


class _Probe(torch.nn.Module):
    """A 'model' that records the windows (and their claimed world frames) it is given."""

    img_size = SPEC.input_size

    def __init__(self) -> None:
        super().__init__()
        self.windows: list[torch.Tensor] = []
        self.affines: list[np.ndarray] = []

    def decode(self, windows: torch.Tensor, affines: np.ndarray) -> Gaussians3D:
        self.windows += list(windows[:, 0])
        self.affines += list(affines)
        b = windows.shape[0]
        return Gaussians3D(torch.full((b, 1, 3), 0.5), torch.full((b, 1, 3), 0.05), torch.tensor([[[1.0, 0, 0, 0]]]).expand(b, 1, 4),
                           torch.ones(b, 1))  # fmt: skip


@pytest.mark.parametrize("kind", ["ras", "lps", "oblique"])
def test_decoder_always_receives_ras_windows_at_the_model_spacing(kind):
    affine = _affine(kind)
    centre = _centre(affine)
    scan = _blob_hu(_world_points(affine, SHAPE), centre).astype(np.float32)
    probe = _Probe()
    zero_shot_gaussians(scan, affine, probe, spec=SPEC, overlap=4, decode=probe.decode)
    assert probe.windows
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


def test_bad_inputs_are_named():
    probe = _Probe()
    with pytest.raises(ValueError, match="3D"):
        zero_shot_gaussians(np.zeros((4, 4)), np.eye(4), probe, spec=SPEC, decode=probe.decode)
    with pytest.raises(ValueError, match="non-singular"):
        zero_shot_gaussians(np.zeros((4, 4, 4)), np.zeros((4, 4)), probe, spec=SPEC, decode=probe.decode)
    bad = np.zeros((4, 4, 4), np.float32)
    bad[1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        zero_shot_gaussians(bad, np.eye(4), probe, spec=SPEC, decode=probe.decode)
    with pytest.raises(ValueError, match="overlap"):
        zero_shot_gaussians(np.zeros((4, 4, 4)), np.eye(4), probe, spec=SPEC, overlap=24, decode=probe.decode)


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


def test_the_spec_may_be_given_as_its_dict():
    """A checkpoint's ``preprocessing`` entry as saved (a dict) is the spec it describes; another type is named."""
    from types import SimpleNamespace

    from medgmae.preprocessing import DEFAULT_SPEC
    from medgmae.zeroshot import _spec_and_window

    model = SimpleNamespace(img_size=(96, 96, 96), preprocessing=None)
    assert _spec_and_window(model, DEFAULT_SPEC.to_dict(), 0, 1) == (DEFAULT_SPEC, (96, 96, 96))
    with pytest.raises(ValueError, match="spec must be a PreprocessingSpec"):
        _spec_and_window(model, "RAS", 0, 1)


def test_a_spec_of_another_window_and_a_fractional_overlap_are_refused():
    """A spec whose input size is not the model's window was run with the model's window while the result's spec
    said the other size; an overlap of 4.7 voxels was cut to 4 without a word."""
    from types import SimpleNamespace

    from medgmae.preprocessing import DEFAULT_SPEC
    from medgmae.zeroshot import _spec_and_window

    model = SimpleNamespace(img_size=(48, 48, 48), preprocessing=None)
    with pytest.raises(ValueError, match=r"input_size \(96, 96, 96\) is not the model's window \(48, 48, 48\)"):
        _spec_and_window(model, DEFAULT_SPEC, 0, 1)
    for overlap in (4.7, True, -1, 48):
        with pytest.raises(ValueError, match="overlap must be a whole number of voxels in \\[0, 48\\)"):
            _spec_and_window(model, None, overlap, 1)
    assert _spec_and_window(model, None, 4.0, 1)[1] == (48, 48, 48)


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


def test_no_gaussians_in_a_full_window_blames_the_scan_not_its_size():
    """A scan filling the window, with no Gaussian, points at its content and the HU window the model sees."""
    from medgmae.zeroshot import ZeroShotResult

    g = Gaussians3D(torch.zeros(1, 0, 3), torch.ones(1, 0, 3), torch.zeros(1, 0, 4), torch.zeros(1, 0))
    res = ZeroShotResult(g, g, (30, 30, 30), np.eye(4), SPEC, np.eye(4)[None], grid=(30, 30, 30), window=(24, 24, 24))
    assert res.no_gaussians_reason() == ("is the scan empty? (the model sees HU in [-175, 250]; a scan all below or "
                                         "all above it is one value to the model)")  # fmt: skip


def test_what_the_python_api_is_given_instead_of_a_scan_and_a_medgmae_is_named():
    """Paths, a voxel-MAE (no Gaussian decoder) and a 2D GMAE ended in an AttributeError, a float conversion error
    or an IndexError (the 2D one after advice to record its pre-processing, which 2D files refuse)."""
    from medgmae.networks import MedGMAE, VoxelMAE
    from medgmae.twod.gmae import GMAE2D

    scan, affine = np.zeros((20, 20, 20), np.float32), np.eye(4)
    medgmae = MedGMAE(img_size=16, patch_size=8, model_size="tiny", num_gaussians=4, render_backend="torch")
    cases = [
        (("ct.nii.gz", affine, medgmae), r"volume must be an \(I, J, K\) array, got the path 'ct.nii.gz'.*read_volume"),
        ((scan, affine, "runs/model.pt"), r"got the path 'runs/model.pt'.*MedGMAE.from_checkpoint"),
        ((scan, affine, VoxelMAE(img_size=16, patch_size=8, model_size="tiny")), "got a VoxelMAE, which predicts none"),
        ((scan, affine, GMAE2D(img_size=16, patch_size=8, model_size="tiny", num_gaussians=4)),
         r"need a 3D MedGMAE model; this GMAE2D takes 2D inputs \(16, 16\)"),
    ]  # fmt: skip
    for args, said in cases:
        with pytest.raises(ValueError, match=said):
            zero_shot_gaussians(*args)


def test_a_model_in_another_dtype_decodes_a_scan_or_is_refused_naming_what_to_do():
    """A model turned to float64 was fed float32 windows, and the refusal advised converting an input the caller
    never sees; the windows now come in the weights' dtype and the Gaussians in float32, placed as the float32
    model places them. A model turned to bf16, whose heads compute in float32, is refused naming autocast."""
    from medgmae.networks import MedGMAE

    torch.manual_seed(0)
    model = MedGMAE(img_size=16, patch_size=8, model_size="tiny", num_gaussians=6, render_backend="torch").eval()
    spec = PreprocessingSpec(spacing=2.0, input_size=16, patch_size=8)
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    scan = np.random.default_rng(0).normal(0, 300, (24, 20, 16)).astype(np.float32)
    ref = zero_shot_gaussians(scan, affine, model, spec=spec, min_intensity=-1e9)
    other = zero_shot_gaussians(scan, affine, model.double(), spec=spec, min_intensity=-1e9)
    assert other.world.means.dtype == torch.float32 and other.world.num_gaussians == ref.world.num_gaussians > 0
    assert torch.allclose(other.world.means, ref.world.means, atol=1e-4)
    with pytest.raises(ValueError, match=r"weights are torch.bfloat16: .*\(model.float\(\)\), under torch.autocast"):
        zero_shot_gaussians(scan, affine, model.to(torch.bfloat16), spec=spec)


def test_the_base_class_loads_a_model_file_as_the_kind_it_records(tmp_path):
    """``MaskedAutoencoder.from_checkpoint`` (the class the package exports beside MedGMAE and VoxelMAE) refused
    every file as not of kind 'masked-autoencoder'; it now builds the model the file records."""
    from medgmae.checkpoint import make_checkpoint
    from medgmae.networks import MaskedAutoencoder, MedGMAE, VoxelMAE

    for model in (MedGMAE(img_size=16, patch_size=8, model_size="tiny", num_gaussians=4, render_backend="torch"),
                  VoxelMAE(img_size=16, patch_size=8, model_size="tiny")):  # fmt: skip
        path = tmp_path / f"{model.kind}.pt"
        torch.save(make_checkpoint(model.kind, model.config(), model.state_dict(), None), path)
        loaded = MaskedAutoencoder.from_checkpoint(path)
        assert type(loaded) is type(model)
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_bad_settings_and_scans_are_named_before_any_work():
    """``batch_size=1.5`` ran as 1, ``min_intensity=nan`` dropped every Gaussian, an affine whose last row is
    ``[0, 0, 0, 5]`` was taken and an empty scan failed inside MONAI's ``Spacingd``."""
    probe = _Probe()
    affine = _affine("ras")
    scan = _blob_hu(_world_points(affine, SHAPE), _centre(affine)).astype(np.float32)
    run = lambda vol=scan, aff=affine, **kw: zero_shot_gaussians(vol, aff, probe, spec=SPEC, decode=probe.decode, **kw)  # noqa: E731
    for batch_size in (1.5, 0, True, "2", float("nan")):
        with pytest.raises(ValueError, match=r"batch_size must be a positive whole number, got "):
            run(batch_size=batch_size)
    for low in (float("nan"), math.inf, "0.1", None):
        with pytest.raises(ValueError, match=r"min_intensity must be a number below infinity"):
            run(min_intensity=low)
    with pytest.raises(ValueError, match=r"overlap must be a whole number of voxels in \[0, 24\), got nan"):
        run(overlap=float("nan"))
    scaled = affine.copy()
    scaled[3, 3] = 5.0
    with pytest.raises(ValueError, match=r"the affine's last row must be \[0, 0, 0, 1\], got \[0\.0, 0\.0, 0\.0, 5\.0\]"):
        run(aff=scaled)
    with pytest.raises(ValueError, match=r"volume must be a 3D \(I, J, K\) scan with voxels, got shape \(0, 30, 22\)"):
        run(vol=scan[:0])
    assert probe.windows == []
    assert run(batch_size=np.int64(2), min_intensity=-math.inf, overlap=2.0).voxel.num_gaussians > 0


def test_a_given_spec_unlike_the_models_recorded_one_is_warned_about(caplog):
    """A model recording 2 mm, HU [-175, 250] and RAS given a spec of 1.5 mm, HU [-1000, 1000] and LPS: one line per
    differing field naming the given and the recorded values; the model's own spec given back warns of nothing."""
    import dataclasses
    import logging

    probe = _Probe()
    probe.preprocessing = SPEC
    scan, affine = np.zeros(SHAPE, np.float32), np.diag([*SPACING, 1.0])
    other = dataclasses.replace(SPEC, spacing=(1.5, 1.5, 1.5), hu_window=(-1000.0, 1000.0), orientation="LPS")
    with caplog.at_level(logging.WARNING):
        zero_shot_gaussians(scan, affine, probe, spec=other, decode=probe.decode)
    lines = [r.getMessage() for r in caplog.records if "differs from" in r.getMessage()]
    assert len(lines) == 3, caplog.text
    assert "spacing [1.5, 1.5, 1.5] differs from the spacing [2.0, 2.0, 2.0] recorded in" in lines[0]
    assert "HU window [-1000.0, 1000.0] differs from the HU window [-175.0, 250.0] recorded in" in lines[1]
    assert "orientation LPS differs from the orientation RAS recorded in the model" in lines[2]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        zero_shot_gaussians(scan, affine, probe, spec=SPEC, decode=probe.decode)
    assert "differs from" not in caplog.text
