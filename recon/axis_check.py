"""Where the rotation axis projects on the detector, estimated from the projections, and the warning when that
disagrees with the geometry's detector offset (``det_offset[0]``, see :mod:`recon.geometry`).

With one offset per view (a flexmap) the estimate is compared with the mean offset of the views it pairs: a pair of
opposite views ``i``, ``j`` mirrors about ``-(u_i + u_j) / 2``, so the pairs' summed correlation peaks near the mean
of the pairs' midpoints, each weighted as its correlation is (by the pair's energy). Over a full turn every view is
paired and that is the mean ``u`` over the views (exactly, for a flexmap that varies as ``sin`` / ``cos`` of the
angle, whose opposite views' deviations cancel); over a parallel beam's half turn only the two end views are, so it
is the mean of their midpoints, which may be far from the mean over all the views. The mid-plane row is placed by
the mean ``v``.

Opposite views see mirrored projections. Parallel beam: the view at ``t + pi`` is the view at ``t`` mirrored about
the column where the rotation axis projects, ``c_axis = (cols - 1) / 2 - offset_u / du``; exactly, in every row.
Flipping it end for end (column ``c`` to ``cols - 1 - c``) leaves it shifted against the view at ``t`` by
``d = 2 c_axis - (cols - 1) = -2 offset_u / du`` columns, which the peak of their cross-correlation gives.

Cone beam: the ray through pixel ``(-u, v)`` at ``t + pi`` is the reflection of the ray through ``(u, v)`` at ``t``
in the plane through the rotation axis parallel to the detector (both pass through the same point of that plane,
the source and detector reflected), so the mirrored opposite view sees the object reflected in that plane. It is
exact for the central ray only: a point at ``a`` along the detector's column axis and ``b`` towards the source
projects at ``u = sd a / (so - b)`` in one view and, mirrored, at ``sd a / (so + b)`` in the other, an error of
about ``2 sd a b / so^2``, first order in the object's depth over ``so``; it is odd in the view angle, so it cancels
(to first order) in the mean over the pairs of a full turn, which the cone-beam estimate therefore needs. Off the
mid-plane, points also land on rows that differ by the same factor, so only the rows next to the mid-plane row
(``(rows - 1) / 2 - offset_v / dv``) are used.

The check reads a band of central rows only (summed into one profile per view), pairs each view with its opposite
(the view at ``t + pi``, interpolated linearly in angle between the two views either side when none is there; for
parallel beam, extrapolated by one step at the ends of a half turn), sums the pairs' cross-correlations and takes
the peak to a sixteenth of a column (the correlation upsampled by zero-padding its spectrum, then a parabola). It
reads a few rows per view: about 0.02 s for a 360 x 256 x 256 stack on one CPU core (``bench/axis_check.py``).
"""

from __future__ import annotations

import math

import numpy as np

from recon.fbp_weights import _arc
from recon.geometry import CTGeometry

__all__ = ["AXIS_TOLERANCE_COLUMNS", "axis_offset_note", "estimate_offset_u"]

#: Columns by which the estimated axis may differ from the geometry's before :func:`axis_offset_note` warns. The
#: estimate's error on noisy simulated 360 x 256 x 256 scans (``bench/axis_check.py``: parallel full and half turn,
#: cone full turn, offsets -2.6 to 1.37 columns) is within 0.03 column (``tests/test_axis_check.py`` asserts within
#: 0.25), while an axis half a column off already costs a 64 x 64 x 32 phantom's noiseless 120-view FBP 10.1 dB of
#: PSNR (35.5 to 25.4) and its FDK 1.5 dB (28.5 to 27.0), one column 15.1 and 5.2 dB (simulated on a 2x finer grid;
#: ``bench/RESULTS.md``).
AXIS_TOLERANCE_COLUMNS = 0.5
#: Rows either side of the mid-plane summed into each view's profile: every row mirrors exactly in a parallel beam,
#: only those near the mid-plane do (nearly) in a cone beam.
BAND_ROWS = {"parallel": 8, "cone": 1}
#: Fewest view pairs an estimate is made from.
MIN_PAIRS = 2
#: Least normalised correlation of the matched pairs: below it the views do not mirror (truncation, a moving
#: object, no structure) and no estimate is given.
MIN_MATCH = 0.9
_UPSAMPLE = 16


def _profiles(proj, geometry: CTGeometry, floor: float = 0.0) -> np.ndarray:
    """Each view's rows next to the mid-plane, less ``floor``, summed: ``(V, cols)`` float64."""
    rows = geometry.det_shape[0]
    mid = (rows - 1) / 2 - _mean_offset(geometry)[1] / geometry.det_spacing[0]
    k = BAND_ROWS[geometry.kind]
    lo, hi = max(0, math.floor(mid) - k), min(rows, math.ceil(mid) + k + 1)
    band = proj[:, lo:hi, :]
    if hasattr(band, "detach"):  # a torch tensor: only the band is copied to the host
        band = band.detach().cpu().numpy()
    return np.asarray(band, dtype=np.float64).sum(axis=1) - floor * (hi - lo)


def _mean_offset(geometry: CTGeometry) -> tuple[float, float]:
    """The detector offset ``(u, v)``: the one of all views, or the mean over the views of a per-view one."""
    if not geometry.per_view_offset:
        return geometry.det_offset
    u, v = geometry.offsets().mean(axis=0)
    return float(u), float(v)


def _opposite(angles: np.ndarray, i: int, step: float, parallel: bool) -> list[tuple[int, float]] | None:
    """The views whose linear combination in angle stands for the view at ``angles[i] + pi``.

    Args:
        angles: ``(V,)`` view angles in radians, in ``[0, 2 pi)``.
        i: the view to pair.
        step: the scan's mean angular step (radians).
        parallel: allow extrapolation by one step (the ends of a parallel beam's half turn).

    Returns:
        ``[(view, weight), ...]``: one view at ``angles[i] + pi``, or the two nearest it (either side, each within a
        step; parallel beam: also both on one side, the nearer within a step); ``None`` when there are none.
    """
    delta = np.angle(np.exp(1j * (angles - angles[i] - math.pi)))  # signed, in (-pi, pi]
    order = np.argsort(np.abs(delta))
    a, b = int(order[0]), int(order[1]) if len(order) > 1 else int(order[0])
    if abs(delta[a]) <= 1e-3 * step:
        return [(a, 1.0)]
    same_side = np.sign(delta[a]) == np.sign(delta[b])
    if abs(delta[a]) > 1.01 * step or abs(delta[b]) > (2.02 if same_side else 1.01) * step or delta[a] == delta[b]:
        return None
    if same_side and not parallel:  # extrapolation: only the parallel beam's half turn needs it
        return None
    wb = -delta[a] / (delta[b] - delta[a])  # linear in angle through (delta_a, p_a), (delta_b, p_b), at 0
    return [(a, 1.0 - wb), (b, wb)]


def _peak(spectrum: np.ndarray, n: int) -> tuple[float, float]:
    """Where the circular correlation whose spectrum is given peaks, to a fraction of a column.

    Args:
        spectrum: ``(n // 2 + 1,)`` its real-FFT spectrum.
        n: its length (columns).

    Returns:
        ``(shift in columns, in (-n/2, n/2], the correlation's value there)``.
    """
    fine = np.fft.irfft(spectrum, n * _UPSAMPLE) * _UPSAMPLE
    k = int(np.argmax(fine))
    y0, y1, y2 = fine[k - 1], fine[k], fine[(k + 1) % len(fine)]
    den = y0 - 2 * y1 + y2
    frac = 0.5 * (y0 - y2) / den if den < 0 else 0.0
    pos = (k + frac) / _UPSAMPLE
    return (pos - n if pos > n / 2 else pos), float(y1)


def estimate_offset_u(proj, geometry: CTGeometry, floor: float = 0.0) -> float | None:
    """The detector offset ``u`` (mm) that puts the rotation axis where the projections show it, or ``None``.

    Args:
        proj: ``(V, rows, cols)`` line integrals (numpy array or torch tensor; only central rows are read).
        geometry: the scan (its ``det_offset[0]`` is not used; ``det_offset[1]``, the mean over the views of a
            per-view offset, places the mid-plane row).
        floor: a level no pixel reads below, subtracted first (:func:`recon.fbp.truncation_note`'s): raw images
            converted with a flat brighter than their open beam read it outside the object, and the correlation,
            padded with zeros, takes such a pedestal across the whole detector for structure mirrored about its
            centre (a right offset of 7 mm was estimated at 4 mm with a flat twice as bright).

    Returns:
        ``offset_u`` in mm, comparable with ``geometry.det_offset[0]``; ``None`` when the views do not pair (a
        parallel beam short of a half turn, a cone beam short of a full turn), fewer than :data:`MIN_PAIRS` pairs,
        projections without structure in the central rows, or pairs that do not mirror (:data:`MIN_MATCH`); and for
        a half-fan scan (:attr:`CTGeometry.half_fan`), whose opposite views overlap only near the central ray (the
        whole rows' correlation peaked at the wrong shift on a simulated one, 32 mm from its 126 mm offset).
    """
    found = _estimate(proj, geometry, floor)
    return None if found is None else found[0]


def _estimate(proj, geometry: CTGeometry, floor: float = 0.0) -> tuple[float, float, int] | None:
    """:func:`estimate_offset_u`'s estimate, with what the geometry says for it and how many views it paired.

    Returns:
        ``(estimate, the geometry's offset u for it, views paired)``: the geometry's is the mean over the pairs of
        their views' mean ``u`` (``(u_i + u_j) / 2``, each pair weighted by its energy, as the summed correlation
        weights it), which for one offset for all views is that offset; ``None`` where no estimate is given.
    """
    v, cols = geometry.num_views, geometry.det_shape[1]
    if v < 2 or cols < 8 or len(proj) != v or geometry.half_fan:
        return None
    angles = np.mod(np.asarray(geometry.angles, dtype=np.float64), 2 * math.pi)
    _, arc, step = _arc(geometry)
    parallel = geometry.kind == "parallel"
    if step <= 0 or (not parallel and arc < 2 * math.pi - 0.5 * step):  # cone beam: a full turn
        return None
    prof = _profiles(proj, geometry, floor)
    noise = np.median(np.abs(np.diff(prof, axis=1))) / (0.6745 * math.sqrt(2)) + 1e-12
    if np.median(np.ptp(prof, axis=1)) < 20 * noise:  # flat or nothing but noise
        return None
    n = 2 ** math.ceil(math.log2(2 * cols))
    spec = np.fft.rfft(prof, n, axis=1)
    flipped = np.fft.rfft(prof[:, ::-1], n, axis=1)
    u = geometry.offsets()[:, 0]
    total, energy, middle = np.zeros(n // 2 + 1, complex), [], []
    for i in range(v):
        opp = _opposite(angles, i, step, parallel)
        if opp is None:
            continue
        q = sum(w * flipped[j] for j, w in opp)
        total += spec[i] * np.conj(q)  # sum_c p_i[c + k] q[c]: peaks at the shift d with q[c] = p_i[c + d]
        energy.append(math.sqrt(float(np.sum(prof[i] ** 2)) * float(np.sum(sum(w * prof[j] for j, w in opp) ** 2))))
        middle.append((u[i] + sum(w * u[j] for j, w in opp)) / 2)  # the offset this pair mirrors about
    if len(energy) < MIN_PAIRS:
        return None
    d, best = _peak(total, n)
    if best < MIN_MATCH * sum(energy):
        return None
    given = float(np.dot(energy, middle) / sum(energy)) if geometry.per_view_offset else geometry.det_offset[0]
    return -d * geometry.det_spacing[1] / 2, given, len(energy)


def axis_offset_note(proj, geometry: CTGeometry, tolerance: float = AXIS_TOLERANCE_COLUMNS,
                     floor: float = 0.0) -> str | None:
    """A warning's text when the projections put the rotation axis more than ``tolerance`` columns from where the
    geometry's ``det_offset[0]`` puts it, else ``None`` (also when :func:`estimate_offset_u` gives no estimate).

    With a per-view offset, the geometry's is the mean over the views the estimate paired with their opposites
    (:func:`_estimate`): all of them over a full turn, the two end views of a parallel beam's half turn.

    Args:
        proj: ``(V, rows, cols)`` line integrals.
        geometry: the scan.
        tolerance: columns.
        floor: subtracted from every line integral first (:func:`estimate_offset_u`).
    """
    found = _estimate(proj, geometry, floor)
    if found is None:
        return None
    est, given, paired = found
    du, cols = geometry.det_spacing[1], geometry.det_shape[1]
    if abs(est - given) <= tolerance * du:
        return None
    what = "det_offset u"
    if geometry.per_view_offset:
        what += (f" (the mean over the {paired} views paired with their opposite views, of {geometry.num_views}, "
                 "as the estimate weights them)")  # fmt: skip
    seen, said = (cols - 1) / 2 - est / du, (cols - 1) / 2 - given / du  # the axis's column, 0-based
    return (f"the projections put the rotation axis at column {seen:.2f} (of 0..{cols - 1}), where det_offset "
            f"u = {round(est, 2) + 0.0:+.2f} mm puts it; geometry.json's {what} = {round(given, 2) + 0.0:+.2f} mm puts it at column "
            f"{said:.2f}: check det_offset (a wrong centre of rotation blurs FBP/FDK)")  # fmt: skip
