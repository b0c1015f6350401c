"""The unit icosphere: the icosahedron subdivided ``level`` times, its vertices pushed out onto the unit sphere.

The sphere every ellipsoid of :mod:`medgmae.ellipsoids` is drawn from: ``10 * 4^level + 2`` unit vertices and
``20 * 4^level`` triangles, each counterclockwise seen from outside (so a mesh built from it is turned outward).
NumPy alone.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

__all__ = ["icosphere"]


def _icosahedron() -> tuple[np.ndarray, np.ndarray]:
    """The 12 unit vertices and 20 triangles of the regular icosahedron, each triangle counterclockwise seen from
    outside."""
    t = (1.0 + math.sqrt(5.0)) / 2.0
    v = np.array([[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t],
                  [0, -1, -t], [0, 1, -t], [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]], dtype=np.float64)  # fmt: skip
    f = np.array([[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4],
                  [11, 10, 2], [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9],
                  [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]], dtype=np.int64)  # fmt: skip
    return v / np.linalg.norm(v, axis=1, keepdims=True), f


def _subdivided(vertices: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each triangle cut into four at its edges' midpoints, pushed out onto the unit sphere (orientation kept)."""
    points, middle, out = list(vertices), {}, []

    def mid(a: int, b: int) -> int:
        key = (min(a, b), max(a, b))
        if key not in middle:
            m = vertices[a] + vertices[b]
            middle[key] = len(points)
            points.append(m / np.linalg.norm(m))
        return middle[key]

    for a, b, c in triangles.tolist():
        ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
        out += [[a, ab, ca], [b, bc, ab], [c, ca, bc], [ab, bc, ca]]
    return np.array(points), np.array(out, dtype=np.int64)


@lru_cache(maxsize=None)
def _cached_icosphere(level: int) -> tuple[np.ndarray, np.ndarray]:
    vertices, triangles = _icosahedron()
    for _ in range(level):
        vertices, triangles = _subdivided(vertices, triangles)
    for a in (vertices, triangles):
        a.flags.writeable = False
    return vertices, triangles


def icosphere(level: int) -> tuple[np.ndarray, np.ndarray]:
    """The unit icosphere of ``level`` subdivisions of the icosahedron.

    Args:
        level: 0 (the icosahedron: 12 vertices, 20 triangles), 1 (42, 80), 2 (162, 320)...: ``10 * 4^level + 2``
            vertices, ``20 * 4^level`` triangles.

    Returns:
        ``(vertices, triangles)``: ``(V, 3)`` float64 unit vectors and ``(F, 3)`` int64 indices, counterclockwise
        seen from outside; read-only (cached).

    Raises:
        ValueError: ``level`` is not a whole number from 0 to 6.
    """
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 0 <= level <= 6:
        raise ValueError(f"level must be a whole number from 0 to 6 (6: 40,962 points a Gaussian), got {level!r}")
    return _cached_icosphere(int(level))
