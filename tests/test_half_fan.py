"""Half-fan (offset-detector) scans: the geometry accepts them over a full turn only, Wang's redundancy weights
count every ray once (an analytic identity), and FBP / FDK of a ball that the detector sees from one side only
recover its attenuation. The projections are exact line integrals of the ball, computed here from the geometry's
definition in :mod:`recon.geometry`'s docstring (no voxel grid, no projector of the toolkit), plus noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from chord_helpers import ball_projections

import recon.fbp as fbp_module
from recon.fbp import fbp, half_fan_weights, truncation_note
from recon.geometry import CTGeometry

SO, SD = 200.0, 300.0
SHAPE = (6, 48, 48)  # (z, y, x), 1 mm voxels
MU, CENTRE, RADIUS = 0.02, (10.0, 5.0, 0.0), 7.0  # per mm; (x, y, z) mm; mm


def _geometry(kind: str, cols: int, offset: float, views: int = 180, arc: float = 360.0) -> CTGeometry:
    if kind == "cone":
        return CTGeometry.cone(SHAPE, 1.0, SO, SD, det_shape=(10, cols), det_spacing=1.5, num_angles=views,
                               arc_deg=arc, det_offset=(offset, 0.0))  # fmt: skip
    return CTGeometry.parallel(SHAPE, 1.0, det_shape=(8, cols), det_spacing=1.0, num_angles=views, arc_deg=arc,
                               det_offset=(offset, 0.0))  # fmt: skip


def _ball_projections(g: CTGeometry, noise: float, seed: int) -> torch.Tensor:
    """Chord lengths through the ball times MU at every pixel centre, from the scan's definition
    (:func:`chord_helpers.pixel_rays`: at angle t the beam runs along (sin t, -cos t, 0); columns step along
    (cos t, sin t, 0) from the detector centre, shifted by the offset; rows along z), plus noise."""
    return torch.as_tensor(ball_projections(g, CENTRE, RADIUS, MU, noise, seed))


def _means(vol: torch.Tensor) -> tuple[float, float]:
    """The mean inside the ball (within 4 mm of its centre, middle slices) and at its mirror image (empty)."""
    d, h, w = SHAPE
    z, y, x = np.meshgrid(np.arange(d) - (d - 1) / 2, np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2, indexing="ij")
    inside = (x - CENTRE[0]) ** 2 + (y - CENTRE[1]) ** 2 + (z - CENTRE[2]) ** 2 < 16
    mirror = (x + CENTRE[0]) ** 2 + (y + CENTRE[1]) ** 2 + (z - CENTRE[2]) ** 2 < 16
    v = vol.double().numpy()
    return float(v[inside].mean()), float(v[mirror].mean())


@pytest.mark.parametrize("kind, cols, offset", [("cone", 32, 15.0), ("cone", 32, -15.0), ("parallel", 40, 14.0)])
def test_the_weights_count_every_ray_once(kind, cols, offset):
    """Where the detector reaches on both sides of the central ray, a column and its mirror image (a whole number of
    columns apart here) weigh 2 together; beyond the short side's reach the column alone weighs 2."""
    g = _geometry(kind, cols, offset)
    assert g.half_fan
    w = half_fan_weights(g).numpy()
    u = g.detector_coords()[0]
    for c in range(cols):
        mirror = np.flatnonzero(np.isclose(u, -u[c]))
        assert 0 <= w[c] <= 2
        if mirror.size:
            assert w[c] + w[mirror[0]] == pytest.approx(2.0, abs=1e-12)
        else:  # its mirror image is off the short side: measured once
            assert w[c] == pytest.approx(2.0, abs=1e-12) and np.sign(u[c]) == np.sign(offset)
    assert half_fan_weights(_geometry(kind, cols * 2, 0.0)) is None  # a centred detector: no weights


@pytest.mark.parametrize("kind, cols, offset", [("cone", 32, 15.0), ("cone", 32, -15.0), ("parallel", 40, 14.0),
                                               ("cone", 400, 15.0)])
def test_the_weights_are_wangs_smooth_ramp_toward_the_wide_side(kind, cols, offset):
    """Wang's weights in float64 from the definition: the short side reaches ``D = cols du / 2 - |offset_u|`` past
    the central ray; a column at ``u`` (toward the wide side) has fan angle ``g = atan(u / sd)`` (parallel: ``u``),
    and weight ``1 + sin(pi / 2 * g / g_D)`` within ``D``, 2 beyond. So they rise monotonically toward the wide side
    and run into 2 without a step (fine columns: neighbours within a few per cent of each other)."""
    g = _geometry(kind, cols, offset) if cols < 100 else CTGeometry.cone(
        SHAPE, 1.0, SO, SD, det_shape=(10, cols), det_spacing=(1.5, 0.12), num_angles=180, det_offset=(offset, 0.0))
    du = g.det_spacing[1]
    u = ((np.arange(cols) - (cols - 1) / 2) * du + offset) * np.sign(offset)  # toward the wide side: positive
    reach = cols * du / 2 - abs(offset)
    x = np.arctan(u / SD) / math.atan(reach / SD) if kind == "cone" else u / reach
    expected = np.where(x >= 1, 2.0, 1 + np.sin(math.pi / 2 * np.clip(x, -1, 1)))
    w = half_fan_weights(g).double().numpy()
    np.testing.assert_allclose(w, expected, atol=1e-6)
    toward_wide = w if offset > 0 else w[::-1]
    assert (np.diff(toward_wide) >= -1e-12).all()
    if cols >= 100:
        assert np.abs(np.diff(w)).max() < 0.05 and toward_wide[0] < 0.02


@pytest.mark.parametrize("kind, cols, offset", [("cone", 32, 15.0), ("cone", 32, -15.0), ("parallel", 40, 14.0)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fbp_of_a_half_fan_scan_recovers_a_ball_seen_from_one_side(kind, cols, offset, seed, monkeypatch):
    """A ball off the axis, in the part of the field of view that only the detector's wide side sees: FBP / FDK
    with the weights give its attenuation within 2 % and nothing at its mirror image (the filtered rows reach past
    the short edge), as a centred detector wide enough for the volume does; unweighted, the rays seen once count
    half, the rows end in a step at the short edge, and the ball is 10 % off."""
    g = _geometry(kind, cols, -offset if seed == 2 else offset)
    proj = _ball_projections(g, noise=0.01, seed=seed)
    inside, mirror = _means(fbp(proj, g))
    assert inside == pytest.approx(MU, rel=0.02) and abs(mirror) < 0.02 * MU, (inside, mirror)
    wide = _geometry(kind, cols + 2 * math.ceil(abs(offset) / g.det_spacing[1]) + 8, 0.0)
    assert not wide.half_fan
    full_inside, _ = _means(fbp(_ball_projections(wide, noise=0.01, seed=seed), wide))
    assert inside == pytest.approx(full_inside, rel=0.02)
    monkeypatch.setattr(fbp_module, "half_fan_weights", lambda geometry: None)
    unweighted, _ = _means(fbp(proj, g))
    assert abs(unweighted / MU - 1) > 0.08, unweighted


def test_a_half_fan_scan_needs_views_all_round_and_a_wide_side_that_covers_the_volume():
    assert _geometry("cone", 32, 16.0).half_fan and not _geometry("cone", 64, 0.0).half_fan
    with pytest.raises(ValueError, match="half-fan .* views all round \\(360 degrees\\)"):
        _geometry("cone", 32, 16.0, views=120, arc=240.0)
    with pytest.raises(ValueError, match="detector too small"):  # the wide side falls short of the volume's edge
        _geometry("cone", 24, 10.0)
    with pytest.raises(ValueError, match="central ray off the detector"):
        _geometry("cone", 32, 24.0)
    g = _geometry("cone", 32, 16.0)
    assert CTGeometry.from_dict(g.to_dict()).half_fan  # a saved half-fan geometry loads


def test_truncation_is_judged_on_the_wide_side_of_a_half_fan_scan():
    """The short side's outer column crosses the object in every view of a half-fan scan (that is the design) and
    is no sign of truncation; an object past the wide side's reach is."""
    g = _geometry("cone", 32, 16.0)
    proj = _ball_projections(g, noise=0.0, seed=0)
    assert truncation_note(proj, g) is None
    cut = proj.clone()
    cut[:, :, -3:] += 0.5 * float(proj.max())  # something wider than the field of view at the wide side's edge
    assert "truncated" in (truncation_note(cut, g) or "")


@pytest.mark.parametrize("side", [1.0, -1.0])
def test_a_view_on_the_central_ray_does_not_decide_the_half_fan_side(side):
    """A half-fan flexmap whose first view is centred (``u = 0``, the others 16 mm to one side) is weighted, padded
    and judged for truncation on the side the others decide, as the same scan with that view 1e-3 mm to their side
    is: the weights and the padded detector agree, an object at the short side's edge is no truncation (one at the
    wide side's is), and FDK gives the ball's attenuation."""
    from recon.fbp_weights import padded_to_both_sides

    def scan(first: float) -> CTGeometry:
        offsets = [(first if i == 0 else 16.0 * side, 0.0) for i in range(120)]
        return CTGeometry.cone(SHAPE, 1.0, SO, SD, det_shape=(10, 52), det_spacing=1.5, num_angles=120,
                               det_offset=offsets)  # fmt: skip

    centred, nudged = scan(0.0), scan(1e-3 * side)
    assert centred.half_fan and nudged.half_fan
    np.testing.assert_allclose(half_fan_weights(centred).numpy(), half_fan_weights(nudged).numpy(), atol=1e-3)
    (pc, gc), (pn, gn) = (padded_to_both_sides(torch.zeros(1, 120, 10, 52), g) for g in (centred, nudged))
    assert pc.shape == pn.shape and np.allclose(gc.offsets(), gn.offsets(), atol=2e-3), (gc.offsets()[:2], gn.offsets()[:2])
    proj = _ball_projections(centred, noise=0.0, seed=0)
    short, wide = (slice(0, 3), slice(-3, None))[:: int(side)]  # the wide side's columns are those toward side * u
    for cols, truncated in ((short, False), (wide, True)):
        cut = proj.clone()
        cut[:, :, cols] += 0.5 * float(proj.max())
        assert ("truncated" in (truncation_note(cut, centred) or "")) == truncated, (side, truncated)
    inside, mirror = _means(fbp(proj, centred))
    assert inside == pytest.approx(MU, rel=0.02) and abs(mirror) < 0.02 * MU, (inside, mirror)


def test_the_example_half_fan_geometry_is_one():
    """configs/geometry/cone_half_fan_256x256x80_120views.json: the benchmark scan, its detector offset to one side."""
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "configs" / "geometry"
    g, full = (CTGeometry.load(folder / f"cone_{name}256x256x80_120views.json") for name in ("half_fan_", ""))
    assert g.half_fan and not full.half_fan and g.det_offset == (160.0, 0.0)
    assert (g.volume_shape, g.voxel_size, g.angles) == (full.volume_shape, full.voxel_size, full.angles)
    assert half_fan_weights(g) is not None and half_fan_weights(full) is None


def test_a_full_turn_is_judged_on_distinct_directions():
    """Two or three turns repeat their angles, and angles may come in any order: still all round; a gap of three
    steps is not."""
    from recon.angle_checks import full_turn

    assert full_turn(np.linspace(0, 4 * np.pi, 120, endpoint=False))
    assert full_turn(np.linspace(0, 6 * np.pi, 90, endpoint=False))
    one = np.linspace(0, 2 * np.pi, 30, endpoint=False)
    assert full_turn(np.concatenate([one, one])) and full_turn(np.random.default_rng(0).permutation(one))
    assert not full_turn(np.delete(one, [10, 11, 12]))  # a gap of four steps of 30
    assert not full_turn(np.linspace(0, np.pi, 60))


def test_a_near_full_turn_half_fan_scan_is_weighted_once():
    """Views all round but for a gap of almost two steps: Parker's short-scan weights would apply to a centred
    detector, and on top of the half-fan weights they halved the ball; only the half-fan weights apply."""
    from recon.fbp import parker_weights

    angles = np.linspace(0, 2 * np.pi - 1.97 * 2 * np.pi / 20, 20)
    g = CTGeometry.cone(SHAPE, 1.0, SO, SD, det_shape=(10, 32), det_spacing=1.5, angles=angles, det_offset=(15.0, 0.0))
    assert g.half_fan and parker_weights(g) is None
    inside, _ = _means(fbp(_ball_projections(g, noise=0.0, seed=0), g))
    assert inside == pytest.approx(MU, rel=0.1), inside


@pytest.mark.parametrize("views", [20, 40, 120])
def test_held_out_views_of_a_half_fan_scan_leave_views_all_round(views):
    """Held-out views are spread over the whole turn (a half-fan scan's opposite views see opposite halves), so the
    views kept for the fit still go all round, for every count that may be held out; a centred scan spreads them
    over 180 degrees as before."""
    from recon.holdout import direction_period, fitted_views_fbp, holdout_split

    g = CTGeometry.cone(SHAPE, 1.0, SO, SD, det_shape=(10, 32), det_spacing=1.5, num_angles=views, det_offset=(15.0, 0.0))
    assert direction_period(g) == pytest.approx(2 * np.pi)
    for holdout in range(1, views // 2 + 1):
        fit, held = holdout_split(g.angles, holdout, direction_period(g))
        g.select_views(fit.tolist())  # refused if the kept views left a gap
    _, held = holdout_split(g.angles, 2, direction_period(g))
    assert abs(np.diff(np.asarray(g.angles)[held.numpy()])[0]) == pytest.approx(np.pi, abs=2 * np.pi / views)
    proj = _ball_projections(g, noise=0.0, seed=0)
    assert fitted_views_fbp(proj, g, views // 3).shape == SHAPE
    centred = _geometry("cone", 64, 0.0, views=views)
    assert direction_period(centred) == pytest.approx(np.pi)


def test_the_axis_check_is_not_made_on_a_half_fan_scan():
    """Opposite views of a half-fan scan overlap near the central ray only: no estimate, so no warning."""
    from recon.axis_check import axis_offset_note, estimate_offset_u

    g = _geometry("cone", 32, 15.0)
    proj = _ball_projections(g, noise=0.01, seed=0).numpy()
    assert estimate_offset_u(proj, g) is None and axis_offset_note(proj, g) is None
