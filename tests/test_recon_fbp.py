"""FBP/FDK over arcs other than 180 or 360 degrees (Parker, over-scans, whole turns, notes); truncated projections."""

import math

import numpy as np
import pytest
import torch

from recon.fbp import fbp
from recon.geometry import CTGeometry
from recon.projectors import TorchProjector

from fbp_helpers import ellipses_slice as _slice, interior_disc as _interior


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
