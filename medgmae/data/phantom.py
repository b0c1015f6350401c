"""Synthetic abdominal CT phantoms with organ labels, deterministic from a seed.

Each phantom is a volume in Hounsfield units (HU) with a label map of abdominal organs, built from smooth analytic
shapes: an elliptical body outline varying along the craniocaudal axis with skin, subcutaneous fat and muscle
layers; organs as ellipsoids and tubes deformed by low-frequency random displacement fields; a lumbar/lower
thoracic spine with cortical shell, cancellous bone, discs and spinal canal; lower ribs; lung bases above a
two-domed diaphragm; bowel loops and stomach with gas and fluid. Per case the body size, fat thickness, organ
positions, sizes, orientations, shapes and HU values vary, and correlated Gaussian noise is added.

Geometry:
    * Arrays are in RAS voxel order: axis 0 runs from the patient's left to right (+x = Right), axis 1 from
      posterior to anterior, axis 2 from inferior to superior. The affine is ``diag(spacing)`` with the volume
      centre at world (0, 0, 0) mm, so ``nibabel.aff2axcodes(affine) == ("R", "A", "S")``.
    * The anatomy is laid out in a reference adult frame (mm) and scaled isotropically so that the body fills
      80-92 % of the in-plane field of view; any shape and spacing therefore shows a whole abdomen. The
      craniocaudal window is centred on the upper abdomen (kidneys, pancreas, liver, lung bases). With the default
      ``shape=(160, 128, 112)`` at 1.5 mm (a 240 x 192 x 168 mm field of view) the body is about 200 x 150 mm
      across, i.e. a small adult at roughly 0.65x adult linear size: organ volumes are about 0.3x adult values.
    * Values are non-contrast CT: liver ~55 HU, spleen ~47, kidneys ~32, blood ~40, fat ~-100, muscle ~50,
      cancellous bone ~330, cortical bone ~750, lung ~-860, gas and outside air -1000.

The label ids follow BTCV's 13 organs (1-13) with four additions (14-17); see ``ORGAN_LABELS``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medgmae.cli_types import nonneg_int, positive_float, positive_int
from scipy import ndimage

__all__ = [
    "ORGAN_LABELS",
    "TISSUE_CLASSES",
    "DEFAULT_SHAPE",
    "DEFAULT_SPACING",
    "GENERATOR_VERSION",
    "Phantom",
    "generate_phantom",
    "phantom_affine",
    "case_seeds",
    "write_phantom_dataset",
    "main",
]

ORGAN_LABELS: dict[int, str] = {
    0: "background",
    1: "spleen",
    2: "right_kidney",
    3: "left_kidney",
    4: "gallbladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "inferior_vena_cava",
    10: "portal_splenic_vein",
    11: "pancreas",
    12: "right_adrenal_gland",
    13: "left_adrenal_gland",
    14: "vertebrae",
    15: "bowel",
    16: "lungs",
    17: "ribs",
}
"""Label ids of the phantom's label map (0 = background). 1-13 are BTCV's organs in BTCV's order."""

TISSUE_CLASSES: dict[int, str] = {
    0: "air",
    1: "skin",
    2: "fat",
    3: "muscle",
    4: "soft_tissue",
    5: "bone",
    6: "lung",
    7: "fluid",
    8: "gas",
}
"""Tissue ids of ``Phantom.tissue`` (what each voxel is made of, independent of the organ label)."""

DEFAULT_SHAPE: tuple[int, int, int] = (160, 128, 112)
DEFAULT_SPACING: tuple[float, float, float] = (1.5, 1.5, 1.5)
GENERATOR_VERSION = 1
"""Bumped whenever the generated content changes for a given seed (recorded in ``dataset.json``)."""

# reference adult frame (mm): body semi-axes, the organ cavity the organ layout is drawn for, z window centre
_A_REF, _B_REF = 160.0, 115.0
_CAVITY_A, _CAVITY_B = 120.0, 85.0
_Z_CENTRE = 125.0


@dataclass
class Phantom:
    """One synthetic CT case.

    Attributes:
        image: (X, Y, Z) float32 volume in HU, RAS voxel order.
        label: (X, Y, Z) uint8 organ labels, ids as in ``ORGAN_LABELS``.
        affine: (4, 4) float64 voxel-to-world (RAS, mm) matrix.
        spacing: voxel size in mm along the three array axes.
        tissue: (X, Y, Z) uint8 tissue classes, ids as in ``TISSUE_CLASSES``.
        seed: the seed the case was generated from.
        scale: physical mm per reference-adult mm (linear); organ volumes scale with ``scale ** 3``.
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    tissue: np.ndarray | None = None
    seed: int = 0
    scale: float = 1.0
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.image.shape)

    def organ_volume_ml(self, label_id: int) -> float:
        """Volume of one label in mL (cm^3)."""
        return float(np.count_nonzero(self.label == label_id)) * float(np.prod(self.spacing)) / 1000.0


def _validate_geometry(shape: Sequence[int], spacing: Sequence[float] | float) -> tuple[tuple, tuple]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or any(s < 8 for s in shape):
        raise ValueError(f"shape must be three integers >= 8 (X, Y, Z voxels), got {shape}.")
    if isinstance(spacing, (int, float)):
        spacing = (float(spacing),) * 3
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be three positive finite numbers (mm), got {spacing}.")
    return shape, spacing


def phantom_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """RAS affine of a phantom grid: ``diag(spacing)`` with the volume centre at world (0, 0, 0) mm.

    Args:
        shape: (X, Y, Z) voxels.
        spacing: voxel size in mm along the three axes.

    Returns:
        (4, 4) float64 voxel-to-world matrix.
    """
    shape, spacing = _validate_geometry(shape, spacing)
    affine = np.diag([*spacing, 1.0]).astype(np.float64)
    affine[:3, 3] = [-(n - 1) / 2.0 * s for n, s in zip(shape, spacing)]
    return affine


# ----------------------------------------------------------------------------------------------------------------
# scene: coordinate grids in the reference frame and painting
# ----------------------------------------------------------------------------------------------------------------


class _Scene:
    """Voxel grids with reference-frame coordinates; shapes are painted in order (later shapes win)."""

    def __init__(self, shape, spacing, scale, cavity_ab):
        self.shape = shape
        nx, ny, nz = shape
        sx, sy, sz = spacing
        # body frame (reference mm, body centred at x = y = 0)
        self.x = ((np.arange(nx) - (nx - 1) / 2.0) * sx / scale).astype(np.float32)
        self.y = ((np.arange(ny) - (ny - 1) / 2.0) * sy / scale).astype(np.float32)
        self.z = (_Z_CENTRE + (np.arange(nz) - (nz - 1) / 2.0) * sz / scale).astype(np.float32)
        # organ frame: the body frame stretched so that this case's cavity has the reference cavity's size
        self.ox = self.x * np.float32(_CAVITY_A / cavity_ab[0])
        self.oy = self.y * np.float32(_CAVITY_B / cavity_ab[1])
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


def _rotation(rx=0.0, ry=0.0, rz=0.0) -> np.ndarray:
    """Rotation matrix Rz @ Ry @ Rx from angles in degrees."""
    ax, ay, az = np.deg2rad([rx, ry, rz])
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    r_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    r_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    r_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return r_z @ r_y @ r_x


def _random_field(rng, amplitude, wavelength, terms=3) -> Callable:
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


def _displacement(rng, amplitude, wavelength) -> Callable:
    fields = [_random_field(rng, amplitude, wavelength) for _ in range(3)]
    return lambda x, y, z: tuple(f(x, y, z) for f in fields)


def _ellipsoid(scene, centre, radii, rot=(0, 0, 0), exponent=2.0, disp=None, disp_amp=0.0):
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
    r = _rotation(*rot).astype(np.float32)
    qx = r[0, 0] * dx + r[1, 0] * dy + r[2, 0] * dz
    qy = r[0, 1] * dx + r[1, 1] * dy + r[2, 1] * dz
    qz = r[0, 2] * dx + r[1, 2] * dy + r[2, 2] * dz
    e = np.float32(exponent)
    f = (np.abs(qx / np.float32(radii[0])) ** e + np.abs(qy / np.float32(radii[1])) ** e
         + np.abs(qz / np.float32(radii[2])) ** e) ** (1 / e)
    return sl, np.broadcast_to(f, tuple(s.stop - s.start for s in sl))


def _tube(scene, points, radii, frame="organ"):
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


def _smooth_path(points, step=6.0):
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


# ----------------------------------------------------------------------------------------------------------------
# the generator
# ----------------------------------------------------------------------------------------------------------------


def generate_phantom(
    seed: int,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] | float = DEFAULT_SPACING,
    noise: bool = True,
) -> Phantom:
    """Generate one synthetic abdominal CT case.

    Args:
        seed: random seed (any non-negative integer); the same seed, shape and spacing give identical arrays.
        shape: (X, Y, Z) voxels in RAS order (each >= 8).
        spacing: voxel size in mm, one number or three.
        noise: add correlated Gaussian noise (10-15 HU); False gives the noise-free (partial-volume smoothed) image.

    Returns:
        A ``Phantom`` with ``image`` (X, Y, Z) float32 HU, ``label`` (X, Y, Z) uint8, ``affine`` (4, 4) float64,
        ``spacing`` and ``tissue`` (X, Y, Z) uint8.
    """
    shape, spacing = _validate_geometry(shape, spacing)
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    rng = np.random.default_rng(int(seed))
    U = rng.uniform

    # --- body size and layers (reference mm) ---
    A, B = _A_REF * U(0.9, 1.1), _B_REF * U(0.85, 1.12)
    fill = U(0.8, 0.92)
    scale = fill * min(shape[0] * spacing[0] / 2 / (A * 1.06), shape[1] * spacing[1] / 2 / (B * 1.04))
    fat = U(8.0, 30.0)  # subcutaneous fat, mm at the flanks
    muscle = U(9.0, 14.0)
    skin = 2.5
    cavity_ab = (A - skin - fat - muscle, B - skin - fat * 1.1 - muscle)
    scene = _Scene(shape, spacing, scale, cavity_ab)
    hu_j = lambda mean, sd: float(mean + rng.normal(0.0, sd))  # noqa: E731

    _body(scene, rng, A, B, skin, fat, muscle, hu_j)
    _viscera(scene, rng, hu_j)
    _spine_and_muscles(scene, rng, hu_j)
    _thorax(scene, rng, hu_j)
    _ribs(scene, rng, A, B, skin, fat, muscle, hu_j)

    # --- partial-volume blur, correlated noise ---
    image = ndimage.gaussian_filter(scene.hu, sigma=0.6, mode="nearest")
    if noise:
        sigma = U(10.0, 15.0)
        white = rng.standard_normal(shape, dtype=np.float32)
        corr = ndimage.gaussian_filter(white, sigma=0.7, mode="wrap")
        image += corr * np.float32(sigma / max(float(corr.std()), 1e-6))
    np.clip(image, -1024.0, 3071.0, out=image)
    return Phantom(
        image=image.astype(np.float32, copy=False),
        label=scene.label,
        affine=phantom_affine(shape, spacing),
        spacing=spacing,
        tissue=scene.tissue,
        seed=int(seed),
        scale=float(scale),
        meta={"body_semi_axes_mm": (A * scale, B * scale), "fat_mm": fat * scale},
    )


def _body(scene, rng, A, B, skin, fat, muscle, hu_j):
    """Body outline with skin, subcutaneous fat and muscle wall; marks the abdominal cavity and thorax."""
    U = rng.uniform
    x, y, z = scene.x[:, None, None], scene.y[None, :, None], scene.z[None, None, :]
    zt = np.clip((z - 120.0) / 80.0, -2, 2)
    ph = U(0, 2 * np.pi)
    a = A * (1 + 0.05 * np.tanh(zt) + 0.02 * np.sin(0.02 * z + ph))
    b = B * (1 + 0.03 * np.tanh(-zt) + 0.02 * np.cos(0.017 * z + ph))
    p_ant, p_post = U(2.0, 2.4), U(2.6, 3.2)
    pexp = np.where(y >= 0, np.float32(p_ant), np.float32(p_post))
    rho = ((np.abs(x) / a) ** pexp + (np.abs(y) / b) ** pexp) ** (1 / pexp)  # (X, Y, Z)
    theta = np.arctan2(y, x)
    wobble = 1.0
    for k in (2, 3, 4):
        wobble = wobble + U(-0.015, 0.015) * np.cos(k * theta + U(0, 2 * np.pi))
    rho = (rho / wobble).astype(np.float32)
    r = np.sqrt(x * x + y * y)
    depth = r * (1 / np.maximum(rho, 1e-3) - 1)  # radial distance to the skin surface, mm
    del r
    sin_t = np.sin(theta)
    fat_t = fat * (1 + 0.45 * sin_t) * (1 + 0.25 * np.exp(-((z - 60.0) / 60.0) ** 2))  # thicker in front and low
    fat_t = np.where(sin_t < -0.3, fat * 0.55, fat_t)
    mus_t = muscle * (1 + 0.3 * np.abs(np.cos(theta)))
    inside = rho < 1
    hu = scene.hu
    hu[inside] = hu_j(30, 8)
    scene.tissue[inside] = 1
    in_fat = inside & (depth > skin)
    hu[in_fat] = hu_j(-102, 6)
    scene.tissue[in_fat] = 2
    in_mus = in_fat & (depth > skin + fat_t)
    hu[in_mus] = hu_j(50, 4)
    scene.tissue[in_mus] = 3
    interior = in_mus & (depth > skin + fat_t + mus_t)
    del depth, fat_t, mus_t, in_fat, in_mus
    # diaphragm: two domes in the organ frame, right higher than left
    scene.dome = _dome(scene, rng)
    dome = scene.dome
    below = scene.z[None, None, :] < dome - 4.0
    scene.interior = interior
    scene.cavity = interior & below
    scene.thorax = interior & (scene.z[None, None, :] > dome)
    diaphragm = interior & ~scene.cavity & ~scene.thorax
    hu[diaphragm] = hu_j(48, 4)
    scene.tissue[diaphragm] = 3
    # visceral (intra-abdominal) fat with a soft-tissue texture (mesentery, vessels)
    tex = _random_field(rng, 22.0, 35.0, terms=4)(x, y, z)
    vf = hu_j(-92, 5) + np.broadcast_to(tex, scene.shape)
    hu[scene.cavity] = vf[scene.cavity]
    scene.tissue[scene.cavity] = 2
    scene.body = inside


def _dome(scene, rng):
    U = rng.uniform
    ox, oy = scene.ox[:, None, None], scene.oy[None, :, None]
    top_r, top_l = U(205, 222), U(195, 212)
    k = U(0.006, 0.009)
    zr = top_r - k * ((ox - 55.0) ** 2 + 0.8 * (oy + 5.0) ** 2)
    zl = top_l - k * ((ox + 55.0) ** 2 + 0.8 * (oy + 5.0) ** 2)
    return np.maximum(np.maximum(zr, zl), U(178, 188) - 0.004 * ox**2).astype(np.float32)


def _organ(scene, rng, centre, radii, rot, jitter_pos, jitter_size, jitter_rot, exponent=2.0, deform=0.12):
    """A randomly placed, sized, rotated and deformed ellipsoid field."""
    U = rng.uniform
    centre = np.asarray(centre, float) + rng.normal(0.0, jitter_pos, 3)
    radii = np.asarray(radii, float) * U(1 - jitter_size, 1 + jitter_size) * U(0.93, 1.07, 3)
    rot = np.asarray(rot, float) + rng.normal(0.0, jitter_rot, 3)
    amp = deform * radii.mean()
    disp = _displacement(rng, amp, wavelength=radii.mean() * U(2.0, 3.5))
    return _ellipsoid(scene, centre, radii, rot, exponent, disp, amp), centre, radii


def _viscera(scene, rng, hu_j):
    U = rng.uniform
    cav = scene.cavity

    # bowel: colon frame and small-bowel loops (painted first: solid organs displace them)
    colon_ctrl = np.array([
        [95, 5, -60], [98, 0, 20], [95, 10, 95], [70, 40, 112], [20, 55, 100], [-30, 52, 108], [-80, 30, 135],
        [-98, 0, 115], [-100, -10, 40], [-95, -5, -60],
    ], float) + rng.normal(0, 5, (10, 3))
    path = _smooth_path(colon_ctrl, step=5.0)
    s = np.cumsum(np.r_[0, np.linalg.norm(np.diff(path, axis=0), axis=1)])
    rad = U(15, 20) * (1 + 0.12 * np.sin(2 * np.pi * s / U(22, 30)))
    _bowel(scene, rng, path, rad, wall=2.5, gas_frac=U(0.3, 0.6), content=(-40, 35), hu_j=hu_j)
    start = np.array([U(-40, 40), U(20, 50), U(60, 90)])
    pts, d = [start], rng.normal(size=3)
    lo, hi = np.array([-70, 0, -40]), np.array([70, 70, 95])
    for _ in range(int(U(28, 40))):
        d = d / np.linalg.norm(d) + rng.normal(0, 0.9, 3)
        d /= np.linalg.norm(d)
        nxt = pts[-1] + 15.0 * d
        d = np.where((nxt < lo) | (nxt > hi), -d, d)
        pts.append(np.clip(nxt, lo, hi))
    path = _smooth_path(np.array(pts), step=5.0)
    _bowel(scene, rng, path, np.full(len(path), U(9, 12)), wall=2.0, gas_frac=U(0.1, 0.3), content=(15, 10), hu_j=hu_j)

    # stomach: J-shaped tube, fundus under the left dome, antrum crossing to the right; gas on top (anterior)
    ctrl = np.array([[-55, -5, 190], [-62, 12, 165], [-45, 35, 138], [-10, 45, 128], [18, 38, 128]], float)
    ctrl += rng.normal(0, 4, ctrl.shape)
    path = _smooth_path(ctrl, step=4.0)
    fillf = U(0.8, 1.15)
    rad = np.interp(np.linspace(0, 1, len(path)), [0, 0.3, 0.7, 1], np.array([34, 30, 20, 10]) * fillf)
    sl, sdf = _tube(scene, path, rad)
    if sl is not None:
        inside = (sdf < 0) & cav[sl]
        if inside.any():
            scene.paint(sl, inside, hu_j(42, 4), 7, tissue=4)
            lumen = inside & (sdf < -3.5)
            scene.paint(sl, lumen, hu_j(18, 8), 7, tissue=7)
            y = scene.grids(sl)[1]
            ytop = np.broadcast_to(y, lumen.shape)[lumen].max() if lumen.any() else 0.0
            gas = lumen & (y > ytop - U(4, 22))
            scene.paint(sl, gas, -1000.0, 7, tissue=8)

    # liver: right lobe + left lobe, deformed together, under the right dome
    disp_amp = U(6, 10)
    disp = _displacement(rng, disp_amp, U(120, 180))
    cr = np.array([68, 2, 170]) + rng.normal(0, 5, 3)
    rr = np.array([72, 78, 68]) * U(0.9, 1.08)
    cl = np.array([-15, 38, 178]) + rng.normal(0, 5, 3)
    rl = np.array([55, 36, 34]) * U(0.85, 1.15)
    sl1, f1 = _ellipsoid(scene, cr, rr, (0, U(-10, 10), U(-15, 5)), 2.0, disp, disp_amp)
    if sl1 is not None:
        big = scene.box(np.minimum(cr - rr.max(), cl - rl.max()) - disp_amp, np.maximum(cr + rr.max(), cl + rl.max()) + disp_amp)
        fr = _embed(scene, big, sl1, f1)
        sl2, f2 = _ellipsoid(scene, cl, rl, (0, 0, U(-20, 0)), 2.0, disp, disp_amp)
        if sl2 is not None:
            fr = np.minimum(fr, _embed(scene, big, sl2, f2))
        liver = (fr < 1) & cav[big]
        scene.paint(big, liver, hu_j(57, 4), 6)

    # gallbladder: pear under the liver's inferior surface
    (sl, f), c, _ = _organ(scene, rng, [45, 35, 118], [14, 14, 32], [20, -25, 0], 4, 0.15, 8, deform=0.06)
    if sl is not None:
        scene.paint(sl, (f < 1) & cav[sl], hu_j(8, 4), 4, tissue=7)

    # spleen: left posterior, long axis along the ribs
    (sl, f), _, _ = _organ(scene, rng, [-92, -35, 172], [24, 48, 55], [0, 0, -35], 5, 0.12, 8, deform=0.1)
    if sl is not None:
        scene.paint(sl, (f < 1) & cav[sl], hu_j(47, 3), 1)

    # pancreas: head near the duodenum, body over the aorta, tail to the splenic hilum
    ctrl = np.array([[25, 12, 122], [5, 10, 132], [-20, 4, 138], [-50, -10, 146], [-72, -22, 152]], float)
    ctrl += rng.normal(0, 3, ctrl.shape)
    path = _smooth_path(ctrl, step=4.0)
    rad = np.interp(np.linspace(0, 1, len(path)), [0, 0.25, 1], np.array([15, 10, 8.5]) * U(0.9, 1.1))
    sl, sdf = _tube(scene, path, rad)
    if sl is not None:
        lob = _random_field(rng, 2.0, 12.0, terms=4)(*scene.grids(sl))
        scene.paint(sl, (sdf + lob < 0) & cav[sl], hu_j(42, 4), 11)

    # kidneys with renal pelvis; the right one is lower (under the liver)
    for lab, sgn, zc in ((2, 1, 88), (3, -1, 98)):
        (sl, f), c, r = _organ(scene, rng, [sgn * 72, -48, zc], [30, 21, 53], [0, sgn * 14, sgn * 28], 5, 0.1, 6,
                               deform=0.05)
        if sl is not None:
            scene.paint(sl, (f < 1) & cav[sl], hu_j(32, 3), lab)
            pel = _ellipsoid(scene, c + np.array([-sgn * 16, 6, 0]), [8, 6, 16])
            if pel[0] is not None:
                scene.paint(pel[0], (pel[1] < 1) & (scene.label[pel[0]] == lab), hu_j(8, 3), lab, tissue=7)

    # adrenal glands: thin plates above-medial to the kidneys
    for lab, sgn, c in ((12, 1, [42, -35, 150]), (13, -1, [-42, -40, 142])):
        (sl, f), _, _ = _organ(scene, rng, c, [5, 14, 18], [0, 0, sgn * 30], 3, 0.1, 10, deform=0.08)
        if sl is not None:
            scene.paint(sl, (f < 1) & cav[sl], hu_j(25, 4), lab)

    # vessels: aorta (left of midline, in front of the spine) and IVC (right), with iliac branches
    ya, xa = -31 + rng.normal(0, 2), -12 + rng.normal(0, 2)
    ra = U(9, 12)
    _vessel(scene, [[xa, ya, 5], [xa + 2, ya + 1, 120], [xa, ya - 6, 260], [xa + 5, ya - 10, 400]], ra, hu_j(42, 3), 8)
    for sgn in (1, -1):
        _vessel(scene, [[xa, ya, 8], [xa + sgn * 30, ya + 4, -40], [xa + sgn * 50, ya + 8, -120]], ra * 0.6, hu_j(42, 3), None)
    yi, xi = -30 + rng.normal(0, 2), 24 + rng.normal(0, 2)
    ri = U(10, 13)
    _vessel(scene, [[xi, yi, 0], [xi, yi, 150], [xi + 3, yi + 12, 200], [xi, yi + 18, 300]], ri, hu_j(40, 3), 9)
    for sgn in (1, -1):
        _vessel(scene, [[xi, yi, 3], [xi + sgn * 25 - 15, yi + 2, -40], [xi + sgn * 45 - 15, yi + 6, -120]], ri * 0.6,
                hu_j(40, 3), None)
    # splenic vein behind the pancreas to the confluence, portal vein up into the liver hilum
    ctrl = np.array([[-78, -28, 155], [-45, -18, 146], [-12, -6, 136], [15, 2, 145], [40, 2, 162], [55, 0, 170]], float)
    ctrl += rng.normal(0, 2, ctrl.shape)
    _vessel(scene, _smooth_path(ctrl, 4.0), U(4.5, 6.5), hu_j(40, 3), 10)
    # esophagus: behind the heart, joining the stomach's cardia
    ctrl = np.array([[-2, -28, 400], [-6, -25, 230], [-25, -12, 200], [-45, -5, 188]], float)
    path = _smooth_path(ctrl, 4.0)
    sl, sdf = _tube(scene, path, np.full(len(path), U(6.5, 8.5)))
    if sl is not None:
        body = scene.cavity[sl] | scene.thorax[sl] | (scene.tissue[sl] == 3)
        scene.paint(sl, (sdf < 0) & body, hu_j(40, 3), 5)


def _embed(scene, big, sl, f):
    """Place a bounding-box field into a larger box (outside: +inf)."""
    out = np.full(tuple(s.stop - s.start for s in big), np.inf, np.float32)
    src, dst = [], []
    for b, s in zip(big, sl):
        lo, hi = max(b.start, s.start), min(b.stop, s.stop)
        dst.append(slice(lo - b.start, hi - b.start))
        src.append(slice(lo - s.start, hi - s.start))
    out[tuple(dst)] = f[tuple(src)]
    return out


def _bowel(scene, rng, path, radii, wall, gas_frac, content, hu_j):
    sl, sdf = _tube(scene, path, radii)
    if sl is None:
        return
    cav = scene.cavity[sl]
    inside = (sdf < 0) & cav
    scene.paint(sl, inside, hu_j(40, 4), 15)
    lumen = inside & (sdf < -wall)
    g = _random_field(rng, 1.0, 40.0, terms=4)(*scene.grids(sl))
    thr = np.quantile(g, 1 - gas_frac) if np.size(g) > 1 else 0
    gas = lumen & (g > thr)
    tex = _random_field(rng, content[1], 10.0, terms=3)(*scene.grids(sl))
    scene.paint(sl, lumen & ~gas, content[0] + np.broadcast_to(tex, lumen.shape), 15, tissue=7)
    scene.paint(sl, gas, -1000.0, 15, tissue=8)


def _vessel(scene, points, radius, hu, label):
    """A tube of constant radius through smoothed control points, inside the cavity or thorax."""
    pts = _smooth_path(np.asarray(points, float), 5.0)
    sl, sdf = _tube(scene, pts, np.full(len(pts), radius))
    if sl is None:
        return
    scene.paint(sl, (sdf < 0) & scene.interior[sl], hu, label)  # crosses the diaphragm


def _spine_and_muscles(scene, rng, hu_j):
    U = rng.uniform
    z0, z1 = float(scene.z[0]) - 40, float(scene.z[-1]) + 40
    body_h, disc_h = U(24, 29), U(7, 9)
    period = body_h + disc_h
    yc, rx, ry = -60 + rng.normal(0, 2), U(20, 24), U(15, 18)
    can_y, can_r = yc - ry - U(8, 10), U(7, 9)
    sl = scene.box((-rx * 3.5, can_y - 35, z0), (rx * 3.5, yc + ry + 2, z1))
    if sl is None:
        return
    x, y, z = scene.grids(sl)
    shape = tuple(s.stop - s.start for s in sl)
    lordosis = 4 * np.sin((z - 60) / 150)
    yy = y - lordosis
    # paraspinal muscles and psoas
    para = ((np.abs(x) - 32) / 22) ** 2 + ((yy - (can_y - 12)) / 20) ** 2 < 1
    psoas_r = np.clip((150 - z) / 150, 0, 1) * U(16, 22)
    psoas = ((np.abs(x) - 38) ** 2 + (yy - (yc + 6)) ** 2) < psoas_r**2
    body = scene.tissue[sl] > 0
    musc = (para | psoas) & body & (scene.tissue[sl] != 1)
    scene.paint(sl, musc, hu_j(50, 3), 0, tissue=3)
    # vertebral bodies (cortical shell + cancellous core) separated by discs
    phase = np.mod(z - U(0, period), period)
    in_body = np.broadcast_to(phase < body_h, shape)
    ell = (x / rx) ** 2 + ((yy - yc) / ry) ** 2
    ell = np.broadcast_to(ell, shape)
    vb = (ell < 1) & in_body
    disc = (ell < 1) & ~in_body
    shell = vb & ((ell > (1 - 2.2 / min(rx, ry)) ** 2) | np.broadcast_to((phase < 1.8) | (phase > body_h - 1.8), shape))
    scene.paint(sl, disc, hu_j(80, 6), 0, tissue=4)
    scene.paint(sl, vb, hu_j(330, 25), 14, tissue=5)
    scene.paint(sl, shell, hu_j(750, 60), 14, tissue=5)
    # posterior arch around the canal, spinous process, transverse processes
    rc = np.sqrt(x**2 + (yy - can_y) ** 2)
    arch = np.broadcast_to((rc < can_r + 5) & (yy < yc - ry + 3) & (phase < body_h + 2), shape)
    spinous = np.broadcast_to((np.abs(x) < 3.5) & (yy < can_y) & (yy > can_y - 30) & (phase > 4) & (phase < body_h), shape)
    trans = np.broadcast_to((np.abs(yy - (can_y + 4)) < 4) & (np.abs(x) < 38) & (phase > 6) & (phase < body_h - 6), shape)
    bone = (arch | spinous | trans) & body
    scene.paint(sl, bone, hu_j(600, 60), 14, tissue=5)
    canal = np.broadcast_to(rc < can_r, shape) & body
    scene.paint(sl, canal, hu_j(10, 3), 0, tissue=7)
    cord = np.broadcast_to(np.sqrt(x**2 + (yy - can_y - 1) ** 2) < can_r * 0.55, shape) & body
    scene.paint(sl, cord, hu_j(35, 3), 0, tissue=4)
    scene.spine = (yc, rx, ry)


def _thorax(scene, rng, hu_j):
    """Lung bases above the diaphragm, heart and mediastinum between them."""
    U = rng.uniform
    th = scene.thorax
    if not th.any():
        return
    hu_lung = hu_j(-860, 20)
    lung = th & (scene.label == 0) & (scene.tissue != 5)
    x, y, z = scene.ox[:, None, None], scene.oy[None, :, None], scene.z[None, None, :]
    medi = (np.abs(x + 5) < 18) & (y > -80)
    lung &= ~np.broadcast_to(medi, lung.shape)
    tex = _random_field(rng, 15.0, 20.0)(x, y, z)
    scene.hu[lung] = np.broadcast_to(hu_lung + tex, lung.shape)[lung]
    scene.label[lung] = 16
    scene.tissue[lung] = 6
    med = th & np.broadcast_to(medi, th.shape) & (scene.label == 0) & (scene.tissue != 5)
    scene.hu[med] = hu_j(-60, 15)
    scene.tissue[med] = 2
    # heart sits on the central diaphragm
    hc = np.array([-18, 25, float(np.min(scene.dome)) + 58]) + rng.normal(0, 4, 3)
    sl, f = _ellipsoid(scene, hc, np.array([68, 48, 60]) * U(0.9, 1.1), (0, 0, U(-30, -10)))
    if sl is not None:
        heart = (f < 1) & th[sl] & (scene.label[sl] != 5) & (scene.label[sl] != 8) & (scene.label[sl] != 9) & (
            scene.tissue[sl] != 5)
        scene.paint(sl, heart, hu_j(40, 3), 0)
    # a few lung vessels
    for _ in range(8):
        p0 = np.array([U(-90, 90), U(-70, 40), U(215, 300)])
        p1 = p0 + rng.normal(0, 25, 3)
        sl, sdf = _tube(scene, [p0, p1], [U(1.5, 3), 1.0])
        if sl is not None:
            scene.paint(sl, (sdf < 0) & (scene.label[sl] == 16), hu_j(40, 5), 16, tissue=4)


def _ribs(scene, rng, A, B, skin, fat, muscle, hu_j):
    """Lower ribs in the body wall, descending from the spine around the flank towards the front."""
    U = rng.uniform
    inset = skin + fat + muscle * 0.55
    a, b = A - inset, B - inset * 0.9
    gap = U(24, 30)
    z_tops = np.arange(U(140, 150), float(scene.z[-1]) + 60, gap)
    hu = hu_j(520, 60)
    for i, z0 in enumerate(z_tops):
        front = np.clip(40 + 15 * i, 40, 110)  # lower ribs are shorter (floating ribs)
        for sgn in (1, -1):
            angles = np.deg2rad(np.linspace(-110, front, 14))
            px = sgn * a * np.cos(angles) * 0.98
            py = b * np.sin(angles) * np.where(np.sin(angles) < 0, 0.92, 1.0)
            pz = z0 - 35 * (np.sin(angles) + 1) / 2 * (angles > -np.pi / 2)
            pts = np.stack([px, py, pz], 1)
            sl, sdf = _tube(scene, pts, np.full(len(pts), U(4.0, 5.5)), frame="body")
            if sl is not None:
                mask = (sdf < 0) & scene.body[sl] & (scene.tissue[sl] >= 2) & (scene.label[sl] == 0)
                scene.paint(sl, mask, hu, 17, tissue=5)


# ----------------------------------------------------------------------------------------------------------------
# dataset writer
# ----------------------------------------------------------------------------------------------------------------


def case_seeds(seed: int, num_cases: int) -> list[int]:
    """Per-case seeds of a phantom dataset (independent streams derived from the dataset seed)."""
    ss = np.random.SeedSequence(int(seed))
    return [int(s.generate_state(1, np.uint32)[0]) for s in ss.spawn(int(num_cases))]


def _atomic_save_nifti(data: np.ndarray, affine: np.ndarray, path: Path, dtype) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    img.header.set_data_dtype(dtype)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp.nii.gz", dir=path.parent)
    os.close(fd)
    try:
        nib.save(img, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_write_text(text: str, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_phantom_dataset(
    out_dir: str | os.PathLike,
    num_cases: int,
    seed: int = 0,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] | float = DEFAULT_SPACING,
    num_validation: int | None = None,
    verbose: bool = False,
) -> Path:
    """Write a Decathlon-style phantom dataset and return the path of its ``dataset.json``.

    Layout: ``imagesTr/case_XXXX.nii.gz`` (int16 HU, rounded), ``labelsTr/case_XXXX.nii.gz`` (uint8 labels), both
    with the RAS affine of ``phantom_affine``, and ``dataset.json`` with ``name``, ``description``, ``labels``
    (``{"0": "background", ...}``), ``numTraining``/``numValidation`` and ``training``/``validation`` lists of
    ``{"image", "label"}`` paths relative to the json's folder (the last ``num_validation`` cases are the
    validation list). Every file is written to a temporary name in its folder and renamed, ``dataset.json`` last.
    When ``dataset.json`` already records the same generator parameters and all its files exist, nothing is
    generated again.

    Args:
        out_dir: output folder (created).
        num_cases: number of cases (>= 1).
        seed: dataset seed; case ``i`` is ``generate_phantom(case_seeds(seed, num_cases)[i], shape, spacing)``.
        shape: (X, Y, Z) voxels per case.
        spacing: voxel size in mm.
        num_validation: cases held out in the ``validation`` list; default ``num_cases // 5`` (0 for < 2 cases).
        verbose: print one line per written case.

    Returns:
        Path of ``dataset.json``.
    """
    if int(num_cases) != num_cases or num_cases < 1:
        raise ValueError(f"num_cases must be a positive integer, got {num_cases!r}.")
    num_cases = int(num_cases)
    if num_validation is None:
        num_validation = num_cases // 5 if num_cases >= 2 else 0
    if int(num_validation) != num_validation or not 0 <= num_validation < num_cases:
        raise ValueError(f"num_validation must be in [0, num_cases - 1] = [0, {num_cases - 1}], got {num_validation!r}.")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    shape, spacing = _validate_geometry(shape, spacing)
    out = Path(out_dir)
    params = {
        "generator": "medgmae.data.phantom",
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "num_cases": num_cases,
        "num_validation": int(num_validation),
        "shape": list(shape),
        "spacing": list(spacing),
    }
    json_path = out / "dataset.json"
    if json_path.is_file():
        try:
            old = json.loads(json_path.read_text())
            files = [e[k] for lst in ("training", "validation") for e in old.get(lst, []) for k in ("image", "label")]
            if old.get("phantom") == params and all((out / f).is_file() for f in files):
                return json_path
        except (ValueError, OSError, KeyError, TypeError, AttributeError):
            pass  # unreadable or foreign dataset.json: regenerate
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    seeds = case_seeds(seed, num_cases)
    entries = []
    for i, s in enumerate(seeds):
        t0 = time.perf_counter()
        ph = generate_phantom(s, shape, spacing)
        name = f"case_{i:04d}.nii.gz"
        _atomic_save_nifti(np.rint(ph.image), ph.affine, out / "imagesTr" / name, np.int16)
        _atomic_save_nifti(ph.label, ph.affine, out / "labelsTr" / name, np.uint8)
        entries.append({"image": f"imagesTr/{name}", "label": f"labelsTr/{name}"})
        if verbose:
            print(f"  {out / 'imagesTr' / name} (seed {s}, {time.perf_counter() - t0:.1f} s)")
    n_train = num_cases - int(num_validation)
    doc = {
        "name": "MedGMAE abdominal CT phantoms",
        "description": "Synthetic non-contrast abdominal CT phantoms with organ labels (medgmae.data.phantom).",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {str(k): v for k, v in ORGAN_LABELS.items()},
        "numTraining": n_train,
        "numValidation": int(num_validation),
        "numTest": 0,
        "training": entries[:n_train],
        "validation": entries[n_train:],
        "test": [],
        "phantom": params,
        "case_seeds": seeds,
    }
    _atomic_write_text(json.dumps(doc, indent=2) + "\n", json_path)
    return json_path


# ----------------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------------


def _shape_dim(text: str) -> int:
    v = positive_int(text)
    if v < 8:
        raise argparse.ArgumentTypeError(f"each shape dimension must be >= 8, got {text!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="medgmae-phantom",
        description="Write a Decathlon-style dataset of synthetic abdominal CT phantoms (NIfTI images and labels).",
    )
    p.add_argument("--out", required=True, help="output folder (dataset.json, imagesTr/, labelsTr/)")
    p.add_argument("--num-cases", type=positive_int, required=True, help="number of cases")
    p.add_argument("--seed", type=nonneg_int, default=0, help="dataset seed (default 0)")
    p.add_argument("--shape", type=_shape_dim, nargs=3, metavar=("X", "Y", "Z"), default=list(DEFAULT_SHAPE),
                   help=f"voxels along R, A, S (default {' '.join(map(str, DEFAULT_SHAPE))})")
    p.add_argument("--spacing", type=positive_float, nargs="+", metavar="MM", default=list(DEFAULT_SPACING),
                   help="voxel size in mm: one value or three (default 1.5)")
    p.add_argument("--num-validation", type=nonneg_int, default=None,
                   help="cases in the validation list (default num-cases // 5)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``medgmae-phantom`` entry point. Returns 0 on success; bad flags exit with code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(args.spacing) not in (1, 3):
        parser.error(f"--spacing takes one or three values, got {len(args.spacing)}")
    spacing = tuple(args.spacing) * 3 if len(args.spacing) == 1 else tuple(args.spacing)
    if args.num_validation is not None and args.num_validation >= args.num_cases:
        parser.error(f"--num-validation ({args.num_validation}) must be smaller than --num-cases ({args.num_cases})")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out} exists and is not a folder")
    t0 = time.perf_counter()
    json_path = write_phantom_dataset(out, args.num_cases, seed=args.seed, shape=tuple(args.shape), spacing=spacing,
                                      num_validation=args.num_validation, verbose=True)
    doc = json.loads(json_path.read_text())
    print(f"wrote {json_path} ({doc['numTraining']} training + {doc['numValidation']} validation cases, "
          f"shape {tuple(args.shape)}, spacing {spacing} mm, {time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
