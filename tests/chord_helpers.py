"""Exact line integrals through balls and ellipsoids, for the projector, FDK and RTK tests: every pixel's ray written
from the scan's definition (:mod:`recon.geometry`'s docstring; one detector offset or one per view), or from a
geometry's ASTRA-style vectors, and the objects voxelised on a geometry's grid."""

from __future__ import annotations

import numpy as np
import torch


def view_offsets(offset, views: int) -> np.ndarray:
    """``offset`` ``(u, v)``, or one such pair per view, as a ``(views, 2)`` float64 array."""
    return np.broadcast_to(np.asarray(offset, dtype=np.float64).reshape(-1, 2), (views, 2))


def pixel_rays(kind, angles, det_shape, det_spacing, offset, so=None, sd=None) -> tuple[np.ndarray, np.ndarray]:
    """Every pixel's centre and unit ray direction ``(V, rows, cols, 3)``, written from the definition: the detector
    centre ``-(sd - so) e + offset_u u + offset_v v`` (parallel: ``offset_u u + offset_v v``), ``e = (sin t, -cos t,
    0)`` towards the source, ``u = (cos t, sin t, 0)``, ``v = z``; pixel ``(r, c)`` at ``((c - (cols-1)/2) du,
    (r - (rows-1)/2) dv)`` from the centre; ``offset`` one ``(u, v)`` or one per view."""
    t = np.asarray(angles, dtype=np.float64)[:, None, None, None]
    rows, cols = det_shape
    off = view_offsets(offset, t.shape[0])
    cu = ((np.arange(cols) - (cols - 1) / 2) * det_spacing[1])[None, None, :, None] + off[:, None, None, :1]
    rv = ((np.arange(rows) - (rows - 1) / 2) * det_spacing[0])[None, :, None, None] + off[:, None, None, 1:]
    e = np.concatenate([np.sin(t), -np.cos(t), 0 * t], -1)
    u = np.concatenate([np.cos(t), np.sin(t), 0 * t], -1)
    v = np.concatenate([0 * t, 0 * t, 1 + 0 * t], -1)
    pix = cu * u + rv * v + (0.0 if kind == "parallel" else -(sd - so) * e)
    d = -e if kind == "parallel" else pix - so * e
    return pix, np.broadcast_to(d / np.linalg.norm(d, axis=-1, keepdims=True), pix.shape)


def geometry_rays(g) -> tuple[np.ndarray, np.ndarray]:
    """:func:`pixel_rays` of a :class:`~recon.geometry.CTGeometry`'s fields (its ``det_offset`` as stored)."""
    return pixel_rays(g.kind, g.angles, g.det_shape, g.det_spacing, g.det_offset, g.source_origin, g.source_detector)


def ball_integrals(pix, d, centre_xyz, radius, mu) -> tuple[np.ndarray, np.ndarray]:
    """``2 mu sqrt(R^2 - dist^2)`` of each ray, and ``dist^2`` (the ray's squared distance from the centre)."""
    rel = np.asarray(centre_xyz, dtype=np.float64) - pix
    perp = rel - (rel * d).sum(-1, keepdims=True) * d
    dist2 = (perp**2).sum(-1)
    return 2 * mu * np.sqrt(np.clip(radius**2 - dist2, 0, None)), dist2


def ball_projections(g, centre, radius: float, mu: float, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """Chord lengths through the ball times ``mu`` at every pixel centre of ``g`` (:func:`geometry_rays`), plus
    Gaussian noise of ``noise`` times the largest chord."""
    chord = ball_integrals(*geometry_rays(g), centre, radius, mu)[0]
    rng = np.random.default_rng(seed)
    return chord + rng.normal(0, noise * chord.max(), chord.shape)


def ellipsoid_integrals(start: np.ndarray, d: np.ndarray, ellipsoids) -> np.ndarray:
    """Line integrals along the rays ``start + s d`` (``d`` unit) through ``ellipsoids``: ``(centre, semi-axes,
    density)`` each, ``(x, y, z)`` mm."""
    out = np.zeros(start.shape[:-1])
    for centre, axes, mu in ellipsoids:
        q, e = (start - centre) / axes, d / axes
        a, b, cc = (e * e).sum(-1), 2 * (q * e).sum(-1), (q * q).sum(-1) - 1
        out += mu * np.sqrt(np.clip(b * b - 4 * a * cc, 0, None)) / a
    return out


def vector_integrals(g, ellipsoids) -> np.ndarray:
    """Line integrals through the ellipsoids at every pixel centre of ``g``, from its ASTRA-style vectors."""
    vec = g.vectors()
    rows, cols = g.det_shape
    c = (np.arange(cols) - (cols - 1) / 2)[None, None, :, None]
    r = (np.arange(rows) - (rows - 1) / 2)[None, :, None, None]
    pixel = vec[:, None, None, 3:6] + c * vec[:, None, None, 6:9] + r * vec[:, None, None, 9:12]
    if g.kind == "cone":
        start = np.broadcast_to(vec[:, None, None, 0:3], pixel.shape)
    else:
        start = pixel - 1e4 * vec[:, None, None, 0:3]
    d = pixel - start
    return ellipsoid_integrals(start, d / np.linalg.norm(d, axis=-1, keepdims=True), ellipsoids)


def voxelised(g, ellipsoids, sub: int = 2) -> np.ndarray:
    """The ellipsoids on ``g``'s voxel grid, each voxel's share inside from ``sub``^3 samples."""
    out = np.zeros(g.volume_shape, np.float32)
    offsets = (np.arange(sub) + 0.5) / sub - 0.5
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(g.volume_shape, g.voxel_size)]
    for oz in offsets:
        for oy in offsets:
            for ox in offsets:
                z, y, x = np.meshgrid(axes[0] + oz * g.voxel_size[0], axes[1] + oy * g.voxel_size[1],
                                      axes[2] + ox * g.voxel_size[2], indexing="ij")  # fmt: skip
                for centre, semi, mu in ellipsoids:
                    inside = ((x - centre[0]) / semi[0]) ** 2 + ((y - centre[1]) / semi[1]) ** 2 + ((z - centre[2]) / semi[2]) ** 2 <= 1
                    out += mu * inside / sub**3
    return out


def mean_offset(g):
    """The geometry ``g`` with one detector offset for all views: the mean of its per-view offsets (what a tool with
    one offset would use)."""
    from recon.geometry import CTGeometry

    return CTGeometry.from_dict({**g.to_dict(), "det_offset": [float(v) for v in g.offsets().mean(0)]})


def relative(p, ref) -> float:
    """``|p - ref| / |ref|`` over the whole arrays."""
    return float(np.linalg.norm(np.asarray(p) - ref) / np.linalg.norm(ref))


def partial_volume_ball(shape, voxel, centre, radius, mu, supersample=4):
    """Partial-volume voxelisation of a ball (mm units, volume centred on the origin)."""
    axes = []
    for n, s, c in zip(shape, voxel, centre):
        sub = (torch.arange(n * supersample, dtype=torch.float64) + 0.5) / supersample - 0.5
        axes.append((sub - (n - 1) / 2) * s - c)
    z, y, x = torch.meshgrid(*axes, indexing="ij")
    inside = (z**2 + y**2 + x**2 <= radius**2).double()
    return mu * torch.nn.functional.avg_pool3d(inside[None, None], supersample)[0, 0]
