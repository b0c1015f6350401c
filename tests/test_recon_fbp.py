"""FBP against scikit-image's iradon and ASTRA's CPU FBP; FDK on a cone-beam ball; filters."""

import math

import numpy as np
import pytest
import torch

from recon.fbp import FILTERS, backproject, fbp, filter_projections, ramp_filter
from recon.geometry import CTGeometry
from recon.projectors import AstraProjector, TorchProjector


def _slice(n=65):
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    img = (((yy + 6) ** 2 / 90 + (xx - 8) ** 2 / 30) < 1) * 1.0 + (((yy - 9) ** 2 / 40 + (xx + 9) ** 2 / 70) < 1) * 0.5
    img += ((yy**2 + xx**2) < 26**2) * 0.2
    return img


def _interior(n, r):
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    return yy**2 + xx**2 < r**2


def test_ramp_filter_shape():
    f = ramp_filter(128, "ram-lak")
    freq = np.fft.fftfreq(128)
    assert abs(float(f[0])) < 5e-3  # (almost) no DC bias: spatial-domain construction
    np.testing.assert_allclose(f.numpy()[1:20], np.abs(freq[1:20]), atol=5e-3)
    np.testing.assert_allclose(float(f[64]), 0.5, atol=5e-3)
    for name in FILTERS[1:]:  # apodised windows attenuate high frequencies only
        g = ramp_filter(128, name)
        assert float(g[64]) < 0.7 * float(f[64]) and abs(float(g[3] - f[3])) < 0.01
    with pytest.raises(ValueError, match="filter"):
        ramp_filter(128, "butterworth")


def _full_fft_filter(proj: torch.Tensor, spacing: float, name: str) -> torch.Tensor:
    """The ramp filter as one float64 complex FFT of the whole stack (the formula before chunking), the oracle."""
    cols = proj.shape[-1]
    size = max(64, 1 << int(math.ceil(math.log2(2 * cols))))
    padded = torch.nn.functional.pad(proj.to(torch.float64), (0, size - cols))
    spec = torch.fft.fft(padded, dim=-1) * ramp_filter(size, name, torch.float64)
    return torch.fft.ifft(spec, dim=-1).real[..., :cols] / spacing


@pytest.mark.parametrize("name", FILTERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chunked_real_fft_filter_matches_the_full_complex_fft(name, dtype):
    """Rows filtered in chunks (a byte budget forcing 7 of 13 rows and a last partial one, 300 columns padded to
    1024) with a real FFT equal the full-stack complex float64 FFT, to float32 / float64 rounding."""
    gen = torch.Generator().manual_seed(5)
    proj = (torch.rand((2, 3, 5, 300), generator=gen, dtype=torch.float64) * 4).to(dtype)  # 30 rows
    ref = _full_fft_filter(proj, 0.7, name)
    out = filter_projections(proj, 0.7, name, chunk_bytes=7 * 8 * 1024)
    assert out.shape == proj.shape and out.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    assert float((out.double() - ref).abs().max()) <= tol * float(ref.abs().max())
    one = filter_projections(proj, 0.7, name, chunk_bytes=1)  # one row per chunk
    torch.testing.assert_close(one, out, rtol=0, atol=0)


@pytest.mark.parametrize(
    "ours, theirs", [("ram-lak", "ramp"), ("shepp-logan", "shepp-logan"), ("cosine", "cosine"), ("hann", "hann")]
)
def test_fbp_matches_skimage_iradon(ours, theirs):
    """Same sinogram (scikit-image's radon) into both. skimage's angle theta is our -theta with its detector
    centre at n // 2 (our (n - 1) / 2 for odd n). Both filter identically and interpolate linearly; the
    residual is the two backprojectors' interpolation."""
    from skimage.transform import iradon, radon

    n = 65
    img = _slice(n)
    theta = np.linspace(0, 180, 90, endpoint=False)
    sino = radon(img, theta, circle=True)  # (n, views)
    ref = iradon(sino, theta, filter_name=theirs, circle=True, output_size=n)
    g = CTGeometry.parallel((1, n, n), 1.0, det_shape=(1, n), det_spacing=1.0, angles=-np.deg2rad(theta))
    rec = fbp(torch.from_numpy(sino.T.copy())[:, None, :], g, ours)[0].numpy()
    m = _interior(n, 28)
    assert np.abs(rec - ref)[m].max() < 0.02 * np.abs(ref).max()
    assert np.abs(rec - ref)[m].mean() < 0.002 * np.abs(ref).max()


@pytest.mark.astra
def test_fbp_matches_astra_cpu_fbp():
    import astra

    n = 64
    img = _slice(n).astype(np.float32)
    g = CTGeometry.parallel((1, n, n), 1.0, num_angles=120)
    # ASTRA's CPU FBP takes its circular "parallel" geometry, which our vectors reproduce (see the geometry tests)
    vg = astra.create_vol_geom(n, n, -n / 2, n / 2, -n / 2, n / 2)
    pg = astra.create_proj_geom("parallel", g.det_spacing[1], g.det_shape[1], np.asarray(g.angles))
    pid = astra.create_projector("linear", pg, vg)
    sid, s = astra.create_sino(img[::-1].copy(), pid)  # ASTRA's 2D row 0 is the top (largest y)
    sino = torch.from_numpy(s.astype(np.float64))[:, None, :]
    rid = astra.data2d.create("-vol", vg, 0.0)
    cfg = astra.astra_dict("FBP")
    cfg.update(ProjectorId=pid, ProjectionDataId=sid, ReconstructionDataId=rid, option={"FilterType": "ram-lak"})
    alg = astra.algorithm.create(cfg)
    astra.algorithm.run(alg)
    ref = astra.data2d.get(rid)[::-1]  # ASTRA's 2D row 0 is the top (largest y)
    astra.algorithm.delete(alg)
    astra.data2d.delete([sid, rid])
    astra.projector.delete(pid)
    torch.testing.assert_close(sino, AstraProjector(g, projector_2d="linear")(torch.from_numpy(img)[None].double())[:, :1], rtol=1e-3, atol=1e-3)
    rec = fbp(sino, g, "ram-lak")[0].numpy()
    m = _interior(n, 26)
    assert np.abs(rec - ref)[m].mean() < 0.01 * img.max()
    assert np.abs(rec - ref)[m].max() < 0.06 * img.max()
    # and both reconstruct the slice
    assert np.abs(rec - img)[m].mean() < 0.03 * img.max()


def test_fdk_cone_ball():
    shape, radius, mu = (24, 32, 32), 7.0, 0.02
    g = CTGeometry.cone(shape, 1.0, source_origin=100.0, source_detector=150.0, num_angles=72)
    z, y, x = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) - (n - 1) / 2 for n in shape], indexing="ij")
    vol = ((z - 2) ** 2 + (y + 3) ** 2 + (x - 4) ** 2 <= radius**2).double() * mu
    proj = TorchProjector(g, step=0.5)(vol)
    rec = fbp(proj, g, "shepp-logan")
    core = (z - 2) ** 2 + (y + 3) ** 2 + (x - 4) ** 2 <= (radius - 2.5) ** 2
    outside = (z - 2) ** 2 + (y + 3) ** 2 + (x - 4) ** 2 >= (radius + 2.5) ** 2
    assert abs(float(rec[core].mean()) - mu) < 0.02 * mu
    assert float((rec[core] - mu).abs().max()) < 0.1 * mu
    assert float(rec[outside & (z.abs() < 8)].abs().mean()) < 0.02 * mu
    # the ball's mass is recovered
    assert abs(float(rec.sum()) / float(vol.sum()) - 1) < 0.03


def test_parallel_fbp_3d_matches_slicewise():
    """A parallel-beam volume is the stack of its slices' 2D reconstructions."""
    n = 24
    g3 = CTGeometry.parallel((3, n, n), 1.0, num_angles=30)
    g1 = CTGeometry.parallel((1, n, n), 1.0, num_angles=30)
    vol = torch.rand(3, n, n, dtype=torch.float64)
    p = TorchProjector(g3)(vol)
    rec3 = fbp(p, g3)
    for k in range(3):
        torch.testing.assert_close(rec3[k], fbp(p[:, k : k + 1], g1)[0])


@pytest.mark.parametrize("seed", range(12))
def test_slice_by_slice_parallel_backprojection_samples_as_the_3d_grid(seed):
    """The parallel-beam backprojection interpolates rows to the voxels' z, then backprojects each slice (no 3D
    sampling grid): bilinear sampling is separable, so it equals the 3D grid's sampling, in float64, for random
    anisotropic volumes, detectors (rows other than slices, spacings other than the voxels') and angles."""
    rng = np.random.default_rng(seed)
    while True:
        shape, rows, cols = tuple(int(v) for v in rng.integers(1, 14, 3)), int(rng.integers(1, 20)), int(rng.integers(2, 40))
        try:
            g = CTGeometry(kind="parallel", volume_shape=shape, voxel_size=tuple(rng.uniform(0.5, 2.5, 3)),
                           det_shape=(rows, cols), det_spacing=tuple(rng.uniform(0.5, 2.5, 2)),
                           angles=np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(1, 12)))))  # fmt: skip
            break
        except ValueError:  # a detector too small for the volume: draw again
            continue
    filtered = torch.from_numpy(rng.normal(size=(2, g.num_views, rows, cols)))
    grid = backproject(filtered, g, per_slice=False)
    assert grid.abs().max() > 0
    torch.testing.assert_close(backproject(filtered, g, chunk=3), grid, rtol=0, atol=1e-12)


def _bilinear_zero_padded(img: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``img`` at fractional (row, column) indices, neighbours outside the image counting as zeros."""
    r0, c0 = np.floor(r).astype(int), np.floor(c).astype(int)
    out = np.zeros(r.shape)
    for dr in (0, 1):
        for dc in (0, 1):
            rr, cc = r0 + dr, c0 + dc
            wgt = (1 - np.abs(r - rr)) * (1 - np.abs(c - cc))
            ok = (rr >= 0) & (rr < img.shape[0]) & (cc >= 0) & (cc < img.shape[1])
            out[ok] += wgt[ok] * img[rr[ok], cc[ok]]
    return out


@pytest.mark.parametrize("seed", range(10))
def test_cone_backprojection_in_slabs_matches_a_per_voxel_float64_oracle(seed, monkeypatch):
    """The cone-beam backprojection cuts each step's slices into slabs (bounded memory): with a budget of a few
    sampling positions (slabs of 1-3 slices, views in chunks of 1-4) it equals ``sum_i w_i(x) q_i(u_i(x), v_i(x))``
    evaluated voxel by voxel in NumPy, over random anisotropic volumes, detectors and angles."""
    import recon.fbp as fbp_module

    rng = np.random.default_rng(100 + seed)
    while True:
        shape = tuple(int(v) for v in rng.integers(2, 9, 3))
        try:
            g = CTGeometry(kind="cone", volume_shape=shape, voxel_size=tuple(rng.uniform(0.5, 2.5, 3)),
                           det_shape=(int(rng.integers(2, 20)), int(rng.integers(2, 30))),
                           det_spacing=tuple(rng.uniform(0.5, 2.5, 2)), source_origin=float(rng.uniform(40, 80)),
                           source_detector=float(rng.uniform(90, 160)),
                           angles=np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(1, 9)))))  # fmt: skip
            break
        except ValueError:  # a detector too small for the volume: draw again
            continue
    filtered = rng.normal(size=(1, g.num_views, *g.det_shape))
    chunk = int(rng.integers(1, 5))
    monkeypatch.setattr(fbp_module, "SAMPLES_PER_STEP", chunk * shape[1] * shape[2] * int(rng.integers(1, 4)))
    ours = backproject(torch.from_numpy(filtered), g, chunk=chunk)[0].numpy()
    (d, h, w), (sz, sy, sx), (rows, cols) = shape, g.voxel_size, g.det_shape
    z, y, x = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, (sz, sy, sx))], indexing="ij")
    oracle = np.zeros(shape)
    for i, a in enumerate(g.angles):
        t, s = x * np.cos(a) + y * np.sin(a), x * np.sin(a) - y * np.cos(a)
        mag = g.source_detector / (g.source_origin - s)
        fr, fc = z * mag / g.det_spacing[0] + (rows - 1) / 2, t * mag / g.det_spacing[1] + (cols - 1) / 2
        oracle += (g.source_origin / (g.source_origin - s)) ** 2 * _bilinear_zero_padded(filtered[0, i], fr, fc)
    assert np.abs(oracle).max() > 0
    np.testing.assert_allclose(ours, oracle, rtol=0, atol=1e-9)


def test_fbp_input_errors():
    g = CTGeometry.parallel((2, 8, 8), 1.0, num_angles=4)
    with pytest.raises(ValueError, match="expects"):
        fbp(torch.zeros(5, *g.det_shape), g)
    bad = torch.zeros(g.proj_shape)
    bad[0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        fbp(bad, g)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_filter_and_the_backprojection_take_numpy_arrays(dtype):
    """``filter_projections`` and ``backproject`` of a NumPy array ended in ``TypeError`` (a NumPy dtype handed to
    ``torch.empty`` / ``torch.arange``); they now filter as the full-stack FFT does, keeping a float64 array's
    precision, and backproject a detector of ones to one per view in every voxel."""
    proj = np.random.default_rng(3).random((2, 4, 5, 40)).astype(dtype)
    out = filter_projections(proj, 0.7, "hann")
    assert isinstance(out, torch.Tensor) and out.dtype == torch.from_numpy(proj).dtype
    ref = _full_fft_filter(torch.from_numpy(proj), 0.7, "hann")
    tol = 1e-6 if dtype == np.float32 else 1e-12
    assert float((out.double() - ref).abs().max()) <= tol * float(ref.abs().max())
    for kind in ("parallel", "cone"):
        g = getattr(CTGeometry, kind)((3, 6, 6), 1.0, num_angles=5)
        vol = backproject(np.ones((1, *g.proj_shape), dtype=dtype), g, fdk_weights=False)
        assert vol.shape == (1, *g.volume_shape)
        torch.testing.assert_close(vol.double(), torch.full(vol.shape, 5.0, dtype=torch.float64))


@pytest.mark.parametrize(
    "kind, arc, views, biased",
    [("parallel", 180, 90, False), ("parallel", 360, 20, False), ("parallel", 270, 90, False), ("parallel", 120, 40, True),
     ("cone", 360, 72, False), ("cone", 360, 20, False), ("cone", 250, 60, False), ("cone", 180, 60, True)],
)
def test_arcs_the_fbp_weights_bias_are_named(kind, arc, views, biased):
    """Exact: 180 or 360 degrees (parallel), 360 or a Parker-weighted short scan (cone); other arcs get a note."""
    from recon.fbp import arc_weighting_note

    cone = dict(source_origin=100.0, source_detector=150.0) if kind == "cone" else {}
    g = getattr(CTGeometry, kind)((8, 16, 16), 1.0, num_angles=views, arc_deg=arc, **cone)
    note = arc_weighting_note(g)
    assert (note is not None) == biased, note
    assert not biased or f"the {views} views cover about {arc} degrees" in note
    assert not biased or ("a short scan needs" if kind == "cone" else "a parallel-beam scan needs") in note
    inclusive = CTGeometry.parallel((8, 16, 16), 1.0, angles=np.linspace(0, math.pi, 91).tolist())  # both ends
    assert arc_weighting_note(inclusive) is None


def test_a_short_arc_just_below_what_a_short_scan_needs_is_told_in_tenths():
    """An arc a fraction of a degree short of 180 plus the fan angle read "about 204 degrees, less than the 204":
    both rounded to whole degrees. Where they round alike, both get a tenth."""
    import re

    from recon.fbp import _fan_half_angle, arc_weighting_note

    cone = dict(source_origin=100.0, source_detector=150.0)
    need = 180 + 2 * math.degrees(_fan_half_angle(CTGeometry.cone((8, 16, 16), 1.0, num_angles=60, **cone)))
    have = round(need) - 0.2 if need - round(need) > -0.1 else need - 0.1  # rounds as need does, below it
    g = CTGeometry.cone((8, 16, 16), 1.0, num_angles=60, arc_deg=have, **cone)  # the note counts the arc with its last step
    said = re.search(r"about ([\d.]+) degrees, less than the ([\d.]+) \(180 plus", arc_weighting_note(g)).groups()
    assert said == (f"{have:.1f}", f"{need:.1f}") and said[0] != said[1], (said, have, need)
    wide = CTGeometry.cone((8, 16, 16), 1.0, num_angles=60, arc_deg=180, **cone)  # far below: whole degrees still
    assert re.search(r"cover about 180 degrees, less than the \d+ \(180 plus", arc_weighting_note(wide))


@pytest.mark.parametrize("centre, start_deg", [((-3, 4), 0), ((5, -6), 0), ((-3, 4), 70), ((5, -6), 200)])
def test_parker_weights_make_a_short_cone_scan_exact(centre, start_deg, monkeypatch):
    """FDK of an off-centre ball over a 240-degree arc (180 plus more than the fan angle), from several starts: its
    core within 0.5 % of the true value with Parker's weights (as the 360-degree scan), and the error around the
    ball well below the unweighted short scan's (measured: RMSE 0.13 against 0.17 of the ball's value)."""
    import recon.fbp as fbp_module

    shape, radius, mu = (24, 32, 32), 7.0, 0.02
    z, y, x = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) - (n - 1) / 2 for n in shape], indexing="ij")
    inside = z**2 + (y - centre[0]) ** 2 + (x - centre[1]) ** 2
    vol, core, near = (inside <= radius**2).double() * mu, inside <= (radius - 2.5) ** 2, inside <= (radius + 3) ** 2

    def errors(arc: float) -> tuple[float, float]:
        angles = (np.deg2rad(start_deg) + np.arange(72) * np.deg2rad(arc) / 72).tolist()
        g = CTGeometry.cone(shape, 1.0, source_origin=100.0, source_detector=150.0, angles=angles)
        rec = fbp(TorchProjector(g, step=0.5)(vol), g, "shepp-logan")
        return abs(float(rec[core].mean()) / mu - 1), float(((rec - vol)[near] ** 2).mean().sqrt()) / mu

    (weighted, weighted_rmse), (full, _) = errors(240), errors(360)
    monkeypatch.setattr(fbp_module, "parker_weights", lambda g: None)
    unweighted_rmse = errors(240)[1]
    assert weighted < 0.005 and full < 0.005 and weighted_rmse < 0.85 * unweighted_rmse, (weighted, full, weighted_rmse, unweighted_rmse)


@pytest.mark.parametrize("arc", [270, 300])
def test_a_parallel_over_scan_is_as_accurate_as_180_degrees(arc):
    """Parallel beam over more than 180 degrees measures some rays twice: with the redundancy weights its FBP is as
    accurate as the 180-degree one (within 15 % RMSE of it, mean within 0.5 %), where unweighted its RMSE was about
    twice the 180-degree one's in this setup."""
    img = torch.from_numpy(_slice()).unsqueeze(0).repeat(3, 1, 1)  # (z, y, x)
    rmse, means = {}, {}
    for a in (180, arc):
        g = CTGeometry.parallel(tuple(img.shape), 1.0, num_angles=a // 2, arc_deg=a)
        rec = fbp(TorchProjector(g, step=0.5)(img.double()), g, "ram-lak")[1]
        inside = torch.from_numpy(_interior(img.shape[-1], 28))
        rmse[a] = float(((rec - img[1])[inside] ** 2).mean().sqrt())
        means[a] = float(rec[inside].mean()) / float(img[1][inside].mean())
    assert rmse[arc] < 1.15 * rmse[180] and abs(means[arc] - 1) < 0.005, (rmse, means)


@pytest.mark.parametrize("kind", ["parallel", "cone"])
def test_views_going_round_twice_weigh_as_one_turn(kind):
    """10 views over 720 degrees are 5 angles taken twice: the same FBP/FDK as the 5 views over 360 (each ray
    counted as often as every other, no Parker weights), with no note; 40 views over 400 degrees are not whole
    turns (the first 40 degrees are measured twice) and get a note; angles that may be degrees (a tomosynthesis arc
    -20..20) get a question (those that clearly are degrees are refused: ``tests/test_recon_geometry.py``)."""
    from recon.fbp import arc_weighting_note, parker_weights

    cone = dict(source_origin=100.0, source_detector=150.0) if kind == "cone" else {}
    make = getattr(CTGeometry, kind)
    once, twice = make((6, 20, 20), 1.0, num_angles=5, arc_deg=360, **cone), make((6, 20, 20), 1.0, num_angles=10, arc_deg=720, **cone)
    vol = torch.rand(6, 20, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(fbp(TorchProjector(twice)(vol), twice), fbp(TorchProjector(once)(vol), once))
    assert arc_weighting_note(twice) is None and parker_weights(twice) is None
    over = make((6, 20, 20), 1.0, num_angles=40, arc_deg=400, **cone)
    assert parker_weights(over) is None and "the 40 views cover about 400 degrees (1.1 turns), more than one turn" in arc_weighting_note(over)
    tomosynthesis = make((6, 20, 20), 1.0, angles=np.linspace(-20.0, 20.0, 21).tolist(), **cone)  # may be degrees
    assert arc_weighting_note(tomosynthesis) == ("the 21 angles run from -20 to 20: as radians, which geometry.json's "
                                                 "angles are, 6.4 turns; are they degrees? (convert them with "
                                                 "numpy.deg2rad)")
    cine = make((6, 20, 20), 1.0, num_angles=720, arc_deg=20 * 360, **cone)  # 20 whole turns in radians: no note
    assert arc_weighting_note(cine) is None


@pytest.mark.parametrize("kind", ["parallel", "cone"])
def test_projections_truncated_at_the_detector_sides_are_named(kind):
    """A detector just covering the grid's inscribed circle (what the geometry check asks) sees a centred disc whole
    but a grid full of water truncated: its outer columns then read most of the largest line integral, and the note
    names the share, the view and the field of view; the default detector (the grid's diagonal) sees both whole."""
    from recon.fbp import truncation_note

    n = 32
    cone = dict(source_origin=200.0, source_detector=300.0) if kind == "cone" else {}
    cols = n if kind == "parallel" else int(math.ceil(n * 300 / 200)) + 2
    narrow = getattr(CTGeometry, kind)((4, n, n), 1.0, det_shape=(16 if kind == "cone" else 4, cols), det_spacing=1.0,
                                       num_angles=24, arc_deg=360, **cone)  # fmt: skip
    wide = getattr(CTGeometry, kind)((4, n, n), 1.0, num_angles=24, arc_deg=360, **cone)
    y, x = torch.meshgrid(torch.arange(n) - (n - 1) / 2, torch.arange(n) - (n - 1) / 2, indexing="ij")
    disc = ((x**2 + y**2) < 10**2).double().expand(4, n, n).contiguous()
    full = torch.ones(4, n, n, dtype=torch.float64)
    assert truncation_note(TorchProjector(narrow)(disc), narrow) is None
    note = truncation_note(TorchProjector(narrow)(full), narrow)
    fov = narrow.det_shape[1] * narrow.det_spacing[1] * (1 if kind == "parallel" else 200 / 300)
    assert note is not None and f"wider than the detector's field of view ({fov:.1f} mm across" in note, note
    assert truncation_note(TorchProjector(wide)(full), wide) is None
    assert truncation_note(TorchProjector(wide)(disc), wide) is None
    # water (0.02 / mm) with every line integral raised by log(1.3) (raw images converted with a flat 1.3 times too
    # bright): the raised air reads as truncation, unless judged above that floor; a truncated scan stays truncated
    lift, seen, cut = math.log(1.3), 0.02 * TorchProjector(narrow)(disc), 0.02 * TorchProjector(narrow)(full)
    assert truncation_note(seen + lift, narrow) is not None
    assert truncation_note(seen + lift, narrow, floor=lift) is None
    note = truncation_note(cut + lift, narrow, floor=lift)
    assert note is not None and f"(both less {lift:.3g}, the level no pixel reads below)" in note, note
    # with Poisson noise (water line integrals up to ~0.4, 300 photons: noise in air ~15 % of the peak): the same
    def noisy(proj, photons, seed):
        counts = torch.poisson(photons * torch.exp(-0.0192 * proj), generator=torch.Generator().manual_seed(seed))
        return -torch.log(counts.clamp_min(1.0) / photons)

    for seed in range(5):
        assert truncation_note(noisy(TorchProjector(wide)(disc), 300, seed), wide) is None, seed
        assert truncation_note(noisy(TorchProjector(narrow)(full), 1000, seed), narrow) is not None, seed


@pytest.mark.parametrize("offset", [(14.0, -3.0), "per-view"])
def test_fdk_cosine_weights_are_each_rays_cosine_to_the_central_ray(offset):
    """FDK's pre-weights are, at every pixel, the cosine of the angle between its ray and the central ray:
    ``dot(d, -e)``, with each pixel's unit ray ``d`` written from the scan's definition in float64
    (:func:`chord_helpers.geometry_rays`; the toolkit's weights use the isocentre-scaled ``so / sqrt(so^2 + u^2 +
    v^2)``, the same number). A wide fan (about 31 degrees to the outer columns) and cone (about 11 degrees to the
    outer rows), and a detector offset in both directions (one for all views, or one per view), so that dropping
    either the ``u`` or the ``v`` term, or either offset, moves some weights by far more than rounding."""
    from chord_helpers import geometry_rays

    from recon.fbp import _cosine_weights

    angles = np.deg2rad([0.0, 37.0, 111.0, 200.0, 290.0])
    if offset == "per-view":
        offset = [(14.0, -3.0), (-9.0, 4.0), (0.0, 0.0), (20.0, 2.5), (-17.0, -5.0)]
    g = CTGeometry("cone", (16, 48, 48), 1.0, (40, 120), (1.5, 1.5), angles, 100.0, 150.0, det_offset=offset)
    pix, d = geometry_rays(g)  # (V, rows, cols, 3)
    toward_detector = np.stack([-np.sin(angles), np.cos(angles), 0 * angles], -1)  # -e: source to isocentre
    expected = (d * toward_detector[:, None, None, :]).sum(-1)
    w = _cosine_weights(g, torch.float64, "cpu").numpy()
    if not g.per_view_offset:
        assert w.shape == g.det_shape
        w = np.broadcast_to(w, expected.shape)
    assert w.shape == expected.shape and expected.min() < 0.85  # the fan and cone are wide enough to matter
    np.testing.assert_allclose(w, expected, rtol=1e-12, atol=0)
