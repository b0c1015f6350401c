"""Redundancy weights of :func:`recon.fbp.fbp`: Parker's short-scan weights and Wang's half-fan (offset-detector)
weights, and the arc a scan's views cover, which decides between them.

With a per-view detector offset (a flexmap, :mod:`recon.detector_offset`) each view's columns sit at their own
distance from the central ray: Parker's fan angles are each view's own, and the half-fan weights are each view's own
too, with one transition width for all views (the short side's reach in the view where it reaches least), so that a
ray's two measurements, half a turn apart, still sum to 2.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from recon.detector_offset import max_abs, wide_side
from recon.geometry import CTGeometry

__all__ = ["parker_weights", "half_fan_weights", "padded_to_both_sides"]


def _arc(geometry: CTGeometry) -> tuple[np.ndarray, float, float]:
    """Each view's angle from the start of the arc, the arc (the covered span plus one mean step: a view stands for
    the step around it) and the mean step, in radians."""
    a = np.mod(np.asarray(geometry.angles, dtype=np.float64), 2 * math.pi)
    order = np.sort(a)
    gaps = np.diff(np.concatenate([order, order[:1] + 2 * math.pi]))
    start = order[(int(np.argmax(gaps)) + 1) % len(order)]  # the view after the largest gap
    span = 2 * math.pi - gaps.max()
    step = span / max(1, len(a) - 1)
    return np.mod(a - start, 2 * math.pi), span + step, step


def _turns(geometry: CTGeometry) -> tuple[float, float] | None:
    """``(arc, step)`` in radians of views that go round more than once (the angles as given, not wrapped: the
    span plus one mean step), or ``None`` for a scan within one turn, which :func:`_arc` describes."""
    raw = np.asarray(geometry.angles, dtype=np.float64)
    if len(raw) < 2:
        return None
    step = float(raw.max() - raw.min()) / (len(raw) - 1)
    arc = step * len(raw)
    return (arc, step) if arc > 2 * math.pi + 1.01 * step else None


def _whole_turns(geometry: CTGeometry, arc: float, step: float) -> bool:
    """Whether an arc of several turns is whole turns (parallel beam: half turns) within a step, so that
    :func:`fbp`'s equal weights count every ray as often as every other."""
    period = math.pi if geometry.kind == "parallel" else 2 * math.pi
    return abs(arc - period * round(arc / period)) <= 1.01 * step


def _exact_arc(geometry: CTGeometry, arc: float, step: float) -> bool:
    """Whether ``fbp``'s ``pi / N`` weight is exact for this arc: 180 or 360 degrees (parallel), 360 (cone), within
    a step (one repeated end view is no over-scan to speak of)."""
    exact = (math.pi, 2 * math.pi) if geometry.kind == "parallel" else (2 * math.pi,)
    return any(abs(arc - e) <= 1.01 * step for e in exact)


def _fan_half_angle(geometry: CTGeometry) -> float:
    """The cone beam's half fan angle in the rotation plane: to the outer edge of the detector's outer columns, on
    the side farther from the central ray on an offset detector (0 for parallel beam)."""
    if geometry.kind == "parallel":
        return 0.0
    half_width = geometry.det_shape[1] / 2 * geometry.det_spacing[1] + max_abs(geometry.det_offset)[0]
    return math.atan(half_width / geometry.source_detector)


def parker_weights(geometry: CTGeometry) -> Tensor | None:
    """Parker's short-scan weights ``(V, cols)`` of an arc between 180 degrees plus the fan angle and 360 degrees
    (parallel beam: strictly between 180 and 360, fan angle 0), or ``None`` (an arc FBP weights exactly as it is, or
    one too short to weight).

    Each ray of a short scan is measured once or twice; ``w(beta, gamma)`` (Parker 1982, with the over-scan angle
    ``delta = (span - 180) / 2`` set by the arc, as RTK does, rather than the fan angle) makes the two measurements of
    every ray sum to one, smoothly. ``beta`` is the view's angle from the start of the arc, ``gamma`` the column's fan
    angle. The weights include the arc's scale, ``arc / 180 degrees``, so that :func:`fbp`'s ``pi / N`` factor stays.
    """
    if geometry.num_views < 3 or _turns(geometry) is not None:  # Parker weights one turn at most
        return None
    if geometry.half_fan:  # its views go all round (the geometry checks): half_fan_weights weight it, Parker's not
        return None
    beta, arc, step = _arc(geometry)
    span = arc - step
    if _exact_arc(geometry, arc, step):
        return None
    delta = (span - math.pi) / 2
    cols = geometry.det_shape[1]
    if geometry.kind == "parallel":  # every ray's fan angle is 0: the weights depend on the view alone
        gamma = np.zeros(cols)
    else:  # (cols,), or each view's own (views, cols) with a per-view offset
        gamma = -np.arctan(geometry.detector_coords()[0] / geometry.source_detector)  # positive against u
    if delta <= _fan_half_angle(geometry):
        return None
    b, g = beta[:, None], (gamma if gamma.ndim == 2 else gamma[None, :])
    w = np.ones((len(beta), cols))
    rise, fall = b < 2 * (delta - g), b > math.pi - 2 * g
    w = np.where(rise, np.sin(math.pi / 4 * b / (delta - g)) ** 2, w)
    w = np.where(fall, np.sin(math.pi / 4 * (math.pi + 2 * delta - b) / (delta + g)) ** 2, w)
    return torch.as_tensor(w * arc / math.pi)


def half_fan_weights(geometry: CTGeometry) -> Tensor | None:
    """The redundancy weights ``(cols,)`` of a half-fan scan (:attr:`CTGeometry.half_fan
    <recon.geometry.CTGeometry>`; ``(views, cols)`` with a per-view offset, each view's own), or ``None`` for any
    other scan.

    Over a full turn, the ray through the detector at ``u`` from the central ray (fan angle ``g = atan(u / sd)``;
    parallel beam: ``u`` itself) is measured again at ``-u`` (``-g``) half a turn on, where the detector reaches
    there. The detector reaches ``D`` past the central ray on its short side (its half width less ``|offset_u|``; the
    least over the views with a per-view offset, so that every view reaches it), so the rays within ``D`` are
    measured twice and those beyond once. Wang's weights (2002, also RTK's ``DisplacedDetectorImageFilter``) are 0
    beyond ``-D``, 2 beyond ``D`` and ``1 + sin(pi / 2 * g / g_D)`` between (on the side the detector reaches less,
    mirrored), so that the two measurements of every ray sum to 2, the weight a ray measured twice has under
    :func:`fbp`'s equal ``pi / N`` weights over a full turn; smoothly, so the ramp filter sees no edge.
    """
    if not geometry.half_fan:
        return None
    reach = geometry.det_shape[1] * geometry.det_spacing[1] / 2 - max_abs(geometry.det_offset)[0]  # short side
    u = torch.as_tensor(geometry.detector_coords()[0] * wide_side(geometry.det_offset))  # toward the wide side: positive
    if geometry.kind == "cone":
        angle, limit = torch.atan(u / geometry.source_detector), math.atan(reach / geometry.source_detector)
    else:
        angle, limit = u, reach
    ramp = 1.0 + torch.sin(math.pi / 2 * angle.clamp(-limit, limit) / limit)
    return torch.where(angle >= limit, torch.full_like(ramp, 2.0), torch.where(angle <= -limit, torch.zeros_like(ramp), ramp))


def padded_to_both_sides(p: Tensor, geometry: CTGeometry) -> tuple[Tensor, CTGeometry]:
    """Weighted half-fan projections ``(B, V, rows, cols)`` padded with zero columns on the detector's short side
    until it reaches as far past the central ray as the wide side (in the view with the largest offset), and the
    geometry of that wider detector (the columns given keep their place). The ramp filter's response to the weighted
    rows spreads past the short edge, and the voxels that project there need it (as RTK pads its displaced
    detector); cut at the edge, it leaves a ghost of each object at its mirror image about the axis (5 % of a ball's
    value in ``tests/test_half_fan.py``)."""
    du, side = geometry.det_spacing[1], wide_side(geometry.det_offset)  # the short side, -side, is padded
    k = math.ceil(2 * max_abs(geometry.det_offset)[0] / du - 1e-9)
    padded = F.pad(p, (k, 0) if side > 0 else (0, k))
    shift = -side * k * du / 2
    if geometry.per_view_offset:
        moved = tuple((float(u) + shift, float(v)) for u, v in geometry.offsets())
    else:
        moved = (geometry.det_offset[0] + shift, geometry.det_offset[1])
    return padded, replace(geometry, det_shape=(geometry.det_shape[0], geometry.det_shape[1] + k), det_offset=moved)
