"""Checks that a geometry's angles are radians: angles written in degrees are refused when they clearly are
degrees, and questioned in a warning when they only may be.

Angles that go round over twice as radians (past 720 degrees, no circular scan's arc) yet are all within 360 (plus a
step) in magnitude and multiples of 0.01 (as degrees are written: 0, 0.5, 1.2...; within float32's rounding, as a
scanner's log stores them) *may* be degrees; a scan in radians saved to two decimals looks the same, so such angles
only get a warning (:func:`degrees_question`). They are refused (:func:`check_radians`) when they clearly are
degrees: going round over twice as radians while within 360, over at least :data:`MIN_VIEWS_RADIANS` views, with a
span plus one step (or a span) of a half or a full turn in degrees, 180 or 360, whatever their decimals (a start at
0.123 degrees, steps of 360 / 71); or, multiples of 0.01, going round over 10 times as radians.

The other way round (:func:`check_degrees`, for RTK's ``GantryAngle``, which is in degrees): angles within a turn
in radians whose span plus one step (or span) is a half or a full turn in radians, pi or 2 pi, over at least
:data:`MIN_VIEWS_RADIANS` views, are radians: no scanner takes dozens of views over 6.3 degrees.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["check_degrees", "check_directions", "check_radians", "degrees_question", "full_turn", "looks_like_degrees"]

#: Turns (as radians) past which angles that may be degrees are taken to be degrees.
DEGREE_TURNS = 10

#: The fewest views whose span of a half or full turn, in the other unit, is taken for that unit (a few views may
#: span anything).
MIN_VIEWS_RADIANS = 8

#: Relative tolerance of a span (plus one step) of 180 or 360, or of an arc_deg of a turn in radians (geometry_fields).
TURN_RTOL = 0.01


def _span_step(angles) -> tuple[np.ndarray, float, float]:
    """The angles as an array, their span and their mean step (the span over the number of gaps)."""
    a = np.asarray(angles, dtype=np.float64)
    span = float(np.ptp(a)) if a.size else 0.0
    return a, span, span / max(1, a.size - 1)


def _hundredths(a: np.ndarray) -> bool:
    """Whether every angle is a multiple of 0.01, within float32's rounding of the largest (degrees a scanner's log
    stored as float32: ``float32(5.37)`` is 5.369999886)."""
    tolerance = max(1e-6, 100 * float(np.abs(a).max()) * float(np.finfo(np.float32).eps))
    hundredths = a * 100
    return bool(np.allclose(hundredths, np.round(hundredths), rtol=0.0, atol=tolerance))


def _round_twice_within_360(angles) -> tuple[np.ndarray, float, float] | None:
    """The angles, span and step (:func:`_span_step`) when, read as radians, they go round over twice, yet each is
    within 360 (plus a step) in magnitude; else ``None``."""
    a, span, step = _span_step(angles)
    if a.size < 2 or span <= 4 * math.pi or np.abs(a).max() > 360 + step:
        return None
    return a, span, step


def looks_like_degrees(angles) -> bool:
    """Whether ``angles`` may be degrees: read as radians they go round over twice, yet each is within 360 (plus a
    step) in magnitude and a multiple of 0.01 (:func:`_hundredths`)."""
    found = _round_twice_within_360(angles)
    return found is not None and _hundredths(found[0])


def clearly_degrees(angles) -> bool:
    """Whether ``angles`` go round over twice as radians while within 360 (plus a step) and, over at least
    :data:`MIN_VIEWS_RADIANS` views, their span plus one step (or their span) is 180 or 360, or, :func:`looking
    like degrees <looks_like_degrees>`, they go round over :data:`DEGREE_TURNS` times as radians."""
    found = _round_twice_within_360(angles)
    if found is None:
        return False
    a, span, step = found
    half_or_full = any(abs(s - t) <= TURN_RTOL * t for t in (180.0, 360.0) for s in (span, span + step))
    return (half_or_full and a.size >= MIN_VIEWS_RADIANS) or (span > DEGREE_TURNS * 2 * math.pi and _hundredths(a))


def check_radians(angles) -> None:
    """Raise ``ValueError`` for angles that :func:`clearly are degrees <clearly_degrees>`."""
    if not clearly_degrees(angles):
        return
    a, span, _ = _span_step(angles)
    raise ValueError(f"angles run from {a.min():.4g} to {a.max():.4g} ({a.size} views): as radians, which angles are, "
                     f"that is {span / (2 * math.pi):.0f} turns; they look like degrees: give them in radians "
                     "(numpy.deg2rad(angles))")  # fmt: skip


def check_degrees(degrees, field: str = "GantryAngle") -> None:
    """Raise ``ValueError`` for angles given as degrees that clearly are radians (module docstring), naming
    ``field``."""
    a, span, step = _span_step(degrees)
    if a.size < MIN_VIEWS_RADIANS or np.abs(a).max() > 2 * math.pi + step:
        return
    matched = [(s, t) for t in (math.pi, 2 * math.pi) for s in (span + step, span) if abs(s - t) <= TURN_RTOL * t]
    if not matched:
        return
    s, turn = min(matched, key=lambda m: abs(m[0] - m[1]))  # many views: both within the tolerance, the closer said
    said = f"{s:.3g} with one step more" if s != span else f"a span of {s:.3g}"
    raise ValueError(f"{field} runs from {a.min():.4g} to {a.max():.4g} over {a.size} views, {said}: a "
                     f"{'full' if turn > 4 else 'half'} turn in radians, while {field} is in degrees; give the angles "
                     "in degrees (numpy.rad2deg(angles))")  # fmt: skip


def check_directions(angles, kind: str = "cone") -> None:
    """Raise ``ValueError`` when more than one view is listed and all point one way (the same angle, modulo a
    turn, or for a parallel beam modulo half a turn, whose opposite views are mirror images): projections from one
    direction hold no tomographic information, so such angles are a list left unfilled (zeros) or wrongly read,
    not a scan."""
    period = math.pi if kind == "parallel" else 2 * math.pi
    a = np.mod(np.asarray(angles, dtype=np.float64), period)
    if a.size < 2 or not np.allclose(np.minimum(np.abs(a - a[0]), period - np.abs(a - a[0])), 0.0, atol=1e-9):
        return
    raise ValueError(f"the {a.size} angles all give one direction ({float(angles[0]):.4g} rad): views from one direction "
                     "cannot be reconstructed; list each view's angle in radians (a list left unfilled?)")  # fmt: skip


def degrees_question(angles) -> str | None:
    """A warning's text for angles that :func:`may be degrees <looks_like_degrees>` (and are not refused), else
    ``None``."""
    if not looks_like_degrees(angles):
        return None
    a, span, _ = _span_step(angles)
    return (f"the {a.size} angles run from {a.min():.4g} to {a.max():.4g}: as radians, which geometry.json's angles "
            f"are, {span / (2 * math.pi):.1f} turns; are they degrees? (convert them with numpy.deg2rad)")  # fmt: skip


def full_turn(angles) -> bool:
    """Whether the views go all round (radians): no gap between neighbouring views, wrapped to one turn, is wider
    than two mean steps of a full turn (``2 * 2 pi / N``, ``N`` the distinct directions: a scan of several turns
    repeats its angles), so that every ray through the rotation plane is measured from one side or the other (what
    an offset-detector scan needs). Two steps, not one: the views kept when some are held out, every few, still go
    all round."""
    wrapped = np.mod(np.asarray(angles, dtype=np.float64), 2 * math.pi)
    a = np.unique(np.round(wrapped, 9) % (2 * math.pi))
    if a.size < 3:
        return False
    gaps = np.diff(np.concatenate([a, a[:1] + 2 * math.pi]))
    return bool(gaps.max() <= 2 * (2 * math.pi / a.size))
