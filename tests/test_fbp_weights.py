"""Parker's short-scan weights (:func:`recon.fbp.parker_weights`) against the identities that define them: every ray
of a short scan is weighted to one in all over its one or two measurements (the conjugate ray found from the scan's
definition, :func:`chord_helpers.pixel_rays`, not from Parker's formula), the weights fade to zero at both ends of the
arc and are the same for the scan run backwards; and the arc a detector offset needs before the weights apply."""

from __future__ import annotations

import math

import numpy as np
import pytest

from chord_helpers import pixel_rays

from recon.fbp import arc_weighting_note, parker_weights
from recon.geometry import CTGeometry

SO, SD, COLS = 100.0, 150.0, 32


def _short_scan(start_deg: float, span_deg: float, step_deg: float, offset: float = 0.0) -> CTGeometry:
    """A cone-beam short scan: views every ``step_deg`` from ``start_deg`` over ``span_deg`` (both ends included)."""
    angles = np.deg2rad(start_deg + np.arange(round(span_deg / step_deg) + 1) * step_deg)
    return CTGeometry.cone((2, 16, 16), 1.0, source_origin=SO, source_detector=SD, det_shape=(4, COLS),
                           det_spacing=1.0, angles=angles.tolist(), det_offset=(offset, 0.0))  # fmt: skip


def _conjugates(g: CTGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Each middle-row ray's other measurement: the view angle ``(V, cols)`` (radians, in ``[0, 2 pi)``) where the
    source sits at the ray's other crossing of the source circle, and the detector ``u`` (mm) it meets there."""
    rows = g.det_shape[0]
    _, d = pixel_rays("cone", g.angles, g.det_shape, g.det_spacing, g.det_offset, SO, SD)
    d = d[:, rows // 2]  # (V, cols, 3); Parker's weights concern the ray's projection on the x-y plane
    d = d[..., :2] / np.linalg.norm(d[..., :2], axis=-1, keepdims=True)
    t = np.asarray(g.angles)[:, None]
    src = SO * np.stack([np.sin(t), -np.cos(t)], -1) + 0 * d  # the source at SO e, e = (sin t, -cos t)
    other = src - 2 * (src * d).sum(-1, keepdims=True) * d  # the line's second crossing of the circle
    t2 = np.arctan2(other[..., 0], -other[..., 1])
    e2, u2 = np.stack([np.sin(t2), -np.cos(t2)], -1), np.stack([np.cos(t2), np.sin(t2)], -1)
    back = -d  # from the conjugate source back along the ray: u e_u - SD e, up to a positive factor
    u = -SD * (back * u2).sum(-1) / (back * e2).sum(-1)
    return np.mod(t2, 2 * math.pi), u - g.det_offset[0]


@pytest.mark.parametrize("start_deg", [0.0, 200.0])
def test_parker_weights_count_every_ray_of_a_short_scan_once(start_deg):
    """Every ray measured twice within the arc has weights summing to ``arc / 180 degrees`` (the weights carry that
    scale, ``fbp``'s ``pi / N`` stays); a ray measured once has that weight alone. The conjugate's weight is
    interpolated between its neighbouring views (views every half degree: error about 1e-4)."""
    step = 0.5
    g = _short_scan(start_deg, 220.0, step)
    w = parker_weights(g).numpy()
    arc = math.radians(220.0 + step)
    beta = np.mod(np.asarray(g.angles) - math.radians(start_deg), 2 * math.pi)
    t2, u2 = _conjugates(g)
    b2 = np.mod(t2 - math.radians(start_deg), 2 * math.pi)
    cols_u = (np.arange(COLS) - (COLS - 1) / 2) * 1.0
    twice = b2 <= beta[-1] + 1e-9
    i = np.clip(np.searchsorted(beta, b2) - 1, 0, len(beta) - 2)
    f = np.clip((b2 - beta[i]) / (beta[i + 1] - beta[i]), 0.0, 1.0)

    def weight_at(v: int, c: int) -> float:  # the conjugate's weight, linear in u, then between the two views
        lo, hi = (np.interp(u2[v, c], cols_u, w[i[v, c] + k]) for k in (0, 1))
        return lo * (1 - f[v, c]) + hi * f[v, c]

    at = np.array([[weight_at(v, c) for c in range(COLS)] for v in range(len(beta))])
    total = np.where(twice, w + at, w)
    assert twice.mean() > 0.1 and (~twice).mean() > 0.3, twice.mean()
    np.testing.assert_allclose(total, arc / math.pi, atol=1e-3)


@pytest.mark.parametrize("kind", ["cone", "parallel"])
def test_parker_weights_vanish_at_both_ends_and_are_the_same_backwards(kind):
    """The weights fade to zero at the arc's first and last views, and the scan run backwards (the views reversed,
    the detector mirrored: cone-beam fan angles change sign) has the same weights: ``w(beta, gamma) =
    w(span - beta, -gamma)``. The parallel scan: a 240-degree arc, views every 2 degrees."""
    if kind == "cone":
        w = parker_weights(_short_scan(30.0, 216.0, 2.0)).numpy()
    else:
        g = CTGeometry.parallel((2, 16, 16), 1.0, det_shape=(4, COLS), num_angles=120, arc_deg=240.0)
        w = parker_weights(g).numpy()
        assert np.ptp(w, axis=1).max() == 0  # parallel beam: the view alone decides
    np.testing.assert_allclose(w[0], 0.0, atol=1e-12)
    np.testing.assert_allclose(w[-1], 0.0, atol=1e-12)
    np.testing.assert_allclose(w, w[::-1, ::-1], atol=1e-12)
    assert w.max() > 1.0


def test_parallel_parker_weights_sum_to_the_arc_over_each_rays_measurements():
    """Parallel beam over 240 degrees, views every 2 degrees (a step dividing 180): the view at ``beta`` and the
    one at ``beta + 180`` measure the same rays; their weights sum to ``arc / 180`` exactly, and a view without a
    partner half a turn away or back has that weight alone."""
    g = CTGeometry.parallel((2, 16, 16), 1.0, det_shape=(4, COLS), num_angles=120, arc_deg=240.0)
    w = parker_weights(g).numpy()[:, 0]
    scale, half = 240.0 / 180.0, 90  # views half a turn apart
    for v in range(120):
        partners = [p for p in (v - half, v + half) if 0 <= p < 120]
        np.testing.assert_allclose(w[v] + sum(w[p] for p in partners), scale, atol=1e-12)


def test_an_offset_detector_needs_the_longer_short_scan_its_far_edge_sets():
    """An offset (not half-fan) detector reaches farther on one side: the fan angle a short scan must exceed runs to
    that side's edge, ``atan((cols du / 2 + |offset_u|) / sd)``. An arc long enough for the centred detector but not
    for the offset one gets no Parker weights, and the note names the arc it needs."""
    offset = 4.0
    need = 180 + 2 * math.degrees(math.atan((COLS / 2 + offset) / SD))
    centred_need = 180 + 2 * math.degrees(math.atan(COLS / 2 / SD))
    span = 193.0  # views every half degree: the arc, with its last step, 193.5 degrees
    assert centred_need < span < need - 2.0, (centred_need, need)
    assert parker_weights(_short_scan(0.0, span, 0.5)) is not None
    g = _short_scan(0.0, span, 0.5, offset=offset)
    assert not g.half_fan and parker_weights(g) is None
    assert f"less than the {need:.0f} (180 plus the fan angle)" in arc_weighting_note(g), arc_weighting_note(g)
    assert parker_weights(_short_scan(0.0, need + 1.0, 0.5, offset=offset)) is not None
