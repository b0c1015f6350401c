"""The flexmap scans of the per-view detector offset tests: a ball and the cone- and parallel-beam scans whose
detector shifts by a few mm over the turn."""

from __future__ import annotations

import math

import numpy as np

from recon.geometry import CTGeometry

SHAPE = (16, 48, 48)  # (z, y, x), 1 mm voxels
MU, CENTRE, RADIUS = 0.02, (8.0, 4.0, 0.0), 7.0  # per mm; (x, y, z) mm; mm
BALL = [(np.array(CENTRE), np.array([RADIUS] * 3), MU)]


def flexmap(angles, u0: float = 1.0, a: float = 4.0, v0: float = 0.5, b: float = 1.0) -> list[tuple[float, float]]:
    """``(u0 + a sin t, v0 + b cos 2t)`` mm at each angle ``t``: a sag of a few mm over the turn."""
    return [(u0 + a * math.sin(t), v0 + b * math.cos(2 * t)) for t in angles]


def flexmap_scan(kind: str, views: int = 90, **flex) -> CTGeometry:
    if kind == "cone":
        angles = np.linspace(0, 2 * np.pi, views, endpoint=False)
        return CTGeometry.cone(SHAPE, 1.0, 200.0, 300.0, det_shape=(24, 64), det_spacing=1.5, angles=angles,
                               det_offset=flexmap(angles, **flex))  # fmt: skip
    angles = np.linspace(0, np.pi, views, endpoint=False)
    return CTGeometry.parallel(SHAPE, 1.0, det_shape=(20, 64), det_spacing=1.0, angles=angles, det_offset=flexmap(angles, **flex))
