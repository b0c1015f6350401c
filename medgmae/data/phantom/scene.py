"""The phantom's drawing surface: voxel grids in the reference adult frame, and the shape primitives.

Coordinates are reference-adult millimetres (see :mod:`medgmae.data.phantom`). The *body* frame has the body
centred at ``x = y = 0``; the *organ* frame is the body frame stretched so that each case's abdominal cavity has
the reference cavity's size, so organ positions can be written once for every body size.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["A_REF", "B_REF", "CAVITY_A", "CAVITY_B", "Z_CENTRE", "Scene", "rotation", "random_field", "displacement",
           "ellipsoid", "tube", "smooth_path", "embed"]

# reference adult frame (mm): body semi-axes, the organ cavity the organ layout is drawn for, z window centre
A_REF, B_REF = 160.0, 115.0
CAVITY_A, CAVITY_B = 120.0, 85.0
Z_CENTRE = 125.0


class Scene:
    """Voxel grids with reference-frame coordinates; shapes are painted in order (later shapes win)."""

    def __init__(self, shape, spacing, scale, cavity_ab):
        self.shape = shape
        nx, ny, nz = shape
        sx, sy, sz = spacing
        # body frame (reference mm, body centred at x = y = 0)
        self.x = ((np.arange(nx) - (nx - 1) / 2.0) * sx / scale).astype(np.float32)
        self.y = ((np.arange(ny) - (ny - 1) / 2.0) * sy / scale).astype(np.float32)
        self.z = (Z_CENTRE + (np.arange(nz) - (nz - 1) / 2.0) * sz / scale).astype(np.float32)
        # organ frame: the body frame stretched so that this case's cavity has the reference cavity's size
        self.ox = self.x * np.float32(CAVITY_A / cavity_ab[0])
        self.oy = self.y * np.float32(CAVITY_B / cavity_ab[1])
        self.hu = np.full(shape, -1000.0, np.float32)
        self.label = np.zeros(shape, np.uint8)
        self.tissue = np.zeros(shape, np.uint8)
        self.cavity = np.zeros(shape, bool)  # abdominal cavity below the diaphragm
        self.thorax = np.zeros(shape, bool)  # inside the body wall above the diaphragm

    def box(self, lo, hi, frame="organ"):
        """Slices of the voxels whose coordinates lie in [lo, hi] (per axis), or None when empty."""
        axes = (self.ox, self.oy, self.z) if frame == "organ" else (self.x, self.y, self.z)
        out = []
        for c, a, b in zip(axes, lo, hi):
            i0, i1 = np.searchsorted(c, a, "left"), np.searchsorted(c, b, "right")
            if i1 <= i0:
                return None
            out.append(slice(int(i0), int(i1)))
        return tuple(out)

    def grids(self, sl, frame="organ"):
        axes = (self.ox, self.oy, self.z) if frame == "organ" else (self.x, self.y, self.z)
        return (axes[0][sl[0]][:, None, None], axes[1][sl[1]][None, :, None], axes[2][sl[2]][None, None, :])

    def paint(self, sl, mask, hu, label=None, tissue=4, within=None):
        """Set HU (scalar or box-shaped array), label and tissue where ``mask`` (box-shaped) is true."""
        if sl is None:
            return
        if within is not None:
            mask = mask & within[sl]
        h = self.hu[sl]
        if np.ndim(hu) == 0:
            h[mask] = hu
        else:
            h[mask] = np.broadcast_to(hu, mask.shape)[mask]
        if label is not None:
            self.label[sl][mask] = label
        self.tissue[sl][mask] = tissue


def rotation(rx=0.0, ry=0.0, rz=0.0) -> np.ndarray:
    """Rotation matrix Rz @ Ry @ Rx from angles in degrees."""
    ax, ay, az = np.deg2rad([rx, ry, rz])
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    r_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    r_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    r_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return r_z @ r_y @ r_x


def random_field(rng, amplitude, wavelength, terms=3) -> Callable:
    """A smooth random scalar field: a sum of plane waves with random directions and phases."""
    dirs = rng.normal(size=(terms, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    k = dirs * (2 * np.pi / (wavelength * rng.uniform(0.8, 1.25, size=(terms, 1))))
    amps = amplitude * rng.uniform(0.5, 1.0, size=terms) / np.sqrt(terms)
    phases = rng.uniform(0, 2 * np.pi, size=terms)

    def f(x, y, z):
        out = 0.0
        for (kx, ky, kz), a, p in zip(k, amps, phases):
            out = out + np.float32(a) * np.sin(np.float32(kx) * x + np.float32(ky) * y + np.float32(kz) * z + p)
        return out

    return f


def displacement(rng, amplitude, wavelength) -> Callable:
    fields = [random_field(rng, amplitude, wavelength) for _ in range(3)]
    return lambda x, y, z: tuple(f(x, y, z) for f in fields)


def ellipsoid(scene, centre, radii, rot=(0, 0, 0), exponent=2.0, disp=None, disp_amp=0.0):
    """Normalised-radius field of a (super)ellipsoid on its bounding box: < 1 inside.

    Returns:
        (slices, field) or (None, None) when the shape misses the grid.
    """
    centre, radii = np.asarray(centre, float), np.asarray(radii, float)
    reach = radii.max() * (1.0 if exponent <= 2 else 3 ** (0.5 - 1.0 / exponent) * 1.0) * 1.05 + disp_amp
    sl = scene.box(centre - reach, centre + reach)
    if sl is None:
        return None, None
    x, y, z = scene.grids(sl)
    dx, dy, dz = x - np.float32(centre[0]), y - np.float32(centre[1]), z - np.float32(centre[2])
    if disp is not None:
        ux, uy, uz = disp(x, y, z)
        dx, dy, dz = dx + ux, dy + uy, dz + uz
    r = rotation(*rot).astype(np.float32)
    qx = r[0, 0] * dx + r[1, 0] * dy + r[2, 0] * dz
    qy = r[0, 1] * dx + r[1, 1] * dy + r[2, 1] * dz
    qz = r[0, 2] * dx + r[1, 2] * dy + r[2, 2] * dz
    e = np.float32(exponent)
    f = (np.abs(qx / np.float32(radii[0])) ** e + np.abs(qy / np.float32(radii[1])) ** e
         + np.abs(qz / np.float32(radii[2])) ** e) ** (1 / e)
    return sl, np.broadcast_to(f, tuple(s.stop - s.start for s in sl))


def tube(scene, points, radii, frame="organ"):
    """Signed distance (mm, < 0 inside) to a tube of varying radius along a polyline, on its bounding box.

    Args:
        points: (N, 3) polyline vertices in reference mm.
        radii: (N,) tube radius at each vertex.

    Returns:
        (slices, sdf) or (None, None) when the tube misses the grid.
    """
    pts, rad = np.asarray(points, np.float64), np.asarray(radii, np.float64)
    lo, hi = (pts - rad[:, None]).min(0), (pts + rad[:, None]).max(0)
    sl = scene.box(lo, hi, frame)
    if sl is None:
        return None, None
    x, y, z = scene.grids(sl, frame)
    axes = [c[s] for c, s in zip(((scene.ox, scene.oy, scene.z) if frame == "organ" else (scene.x, scene.y, scene.z)), sl)]
    sdf = np.full(tuple(s.stop - s.start for s in sl), np.inf, np.float32)
    for a, b, ra, rb in zip(pts[:-1], pts[1:], rad[:-1], rad[1:]):
        r = max(ra, rb)
        sub = []
        for c, lo_, hi_ in zip(axes, np.minimum(a, b) - r, np.maximum(a, b) + r):
            i0, i1 = np.searchsorted(c, lo_, "left"), np.searchsorted(c, hi_, "right")
            sub.append(slice(int(i0), int(i1)))
        if any(s.stop <= s.start for s in sub):
            continue
        px, py, pz = x[sub[0]] - np.float32(a[0]), y[:, sub[1]] - np.float32(a[1]), z[:, :, sub[2]] - np.float32(a[2])
        ab = (b - a).astype(np.float32)
        len2 = max(float(ab @ ab), 1e-6)
        t = np.clip((px * ab[0] + py * ab[1] + pz * ab[2]) / np.float32(len2), 0, 1)
        d = np.sqrt((px - t * ab[0]) ** 2 + (py - t * ab[1]) ** 2 + (pz - t * ab[2]) ** 2) - (ra + t * np.float32(rb - ra))
        view = sdf[tuple(sub)]
        np.minimum(view, d, out=view)
    return sl, sdf


def smooth_path(points, step=6.0):
    """Resample a polyline through control points with a Catmull-Rom spline at about ``step`` mm."""
    p = np.asarray(points, np.float64)
    if len(p) < 3:
        n = max(2, int(np.linalg.norm(p[-1] - p[0]) / step) + 1)
        return np.linspace(p[0], p[-1], n)
    ext = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    out = []
    for i in range(1, len(ext) - 2):
        p0, p1, p2, p3 = ext[i - 1], ext[i], ext[i + 1], ext[i + 2]
        n = max(2, int(np.linalg.norm(p2 - p1) / step) + 1)
        t = np.linspace(0, 1, n, endpoint=False)[:, None]
        out.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                          + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3))
    out.append(p[-1:])
    return np.vstack(out)


def embed(scene, big, sl, f):
    """Place a bounding-box field into a larger box (outside: +inf)."""
    out = np.full(tuple(s.stop - s.start for s in big), np.inf, np.float32)
    src, dst = [], []
    for b, s in zip(big, sl):
        lo, hi = max(b.start, s.start), min(b.stop, s.stop)
        dst.append(slice(lo - b.start, hi - b.start))
        src.append(slice(lo - s.start, hi - s.start))
    out[tuple(dst)] = f[tuple(src)]
    return out
