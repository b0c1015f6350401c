"""Gaussians as a triangle mesh of ellipsoids, one per Gaussian, in a legacy VTK file that 3D Slicer draws.

The ``.ply`` of :mod:`medgmae.ply` holds the Gaussians as vertices without faces (the 3DGS convention), which 3D
Slicer loads as points without cells and does not draw. This module writes, beside it, one closed, outward-oriented
low-poly ellipsoid per Gaussian: an icosphere of unit vectors ``u`` mapped to ``centre + r R S u``, ``R`` the
Gaussian's rotation and ``S = diag(scales)``, so that every vertex lies at Mahalanobis distance ``r`` from the centre.

``r`` is the **half-maximum** radius ``sqrt(2 ln 2) = 1.1774`` by default: each ellipsoid is the surface where its
Gaussian falls to half its peak, its full width at half maximum along each of its axes, the usual measure of a
blob's size in an image (inside it the Gaussian adds more than half its intensity to the rendering). One standard
deviation (61 % of the peak) draws the Gaussians smaller; the renderer's cutoff, 3 (1 % of the peak), 2.5 times
wider, where neighbours' shells would hide one another.

The file is a binary legacy VTK polydata file (version 4.2, the one 3D Slicer writes): ``POINTS`` (float32, world
millimetres), ``POLYGONS`` (triangles) and one point-data array, ``intensity`` (float32: each vertex carries its
Gaussian's intensity, as the ``.ply`` holds it). Its header line carries 3D Slicer's ``SPACE=RAS``: Slicer reads the
points as RAS (a file without it is taken as LPS, mirrored in x and y against the scan), and a model with point
scalars opens coloured by them. (A PLY does not serve: VTK's PLY reader, Slicer's, keeps of the vertex properties
only the position, normal, texture coordinates and ``red`` / ``green`` / ``blue`` / ``alpha`` bytes, and drops a float
intensity.) Ellipsoid ``i`` is the ``i``-th Gaussian, in the
``.ply``'s order: its points are rows ``i * V`` to ``(i + 1) * V - 1``, ``V`` the points of one ellipsoid. Every
Gaussian is drawn, faint ones too: the reconstruction prunes near-zero intensities itself, and Slicer's scalar
threshold hides the faint ones on screen.

The sphere's resolution follows the count (:func:`sphere_level`), so that a file stays near 50 MB or less up to
100,000 Gaussians: a Gaussian costs ``16 V + 16 F`` bytes (``F`` triangles), 7,712 bytes at level 2 (162 points, 320
triangles; up to 6,250 Gaussians), 1,952 at level 1 (42, 80; up to 25,000), 512 at level 0, the icosahedron (12, 20;
beyond), so 200,000 Gaussians take 102 MB. Gaussians must be in the world frame (RAS millimetres, the toolkit's
world): the ``SPACE=RAS`` comment says so.

Zero-shot inference and ``medgmae-recon reconstruct`` write the mesh beside their ``.ply`` only up to
:data:`MESH_LIMIT` Gaussians (200,000: 102 MB). Above it they write none (and remove one an earlier run left under
that name, which would not be this run's Gaussians) and say so in one line with the command that writes it from the
``.ply`` (:func:`skipped_mesh_message`): ``medgmae-ellipsoids GAUSSIANS.ply --out FILE.vtk``
(:mod:`medgmae.ellipsoids_cli`), which also draws a ``.ply`` at another ``--radius`` or ``--level``.
"""

from __future__ import annotations

import math
import os
import shlex
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from medgmae.files import atomic_write
from medgmae.gaussians import Gaussians3D
from medgmae.rotations import quaternion_to_rotation_matrix

__all__ = [
    "HALF_MAXIMUM_RADIUS",
    "TRIANGLE_BUDGET",
    "MAX_LEVEL",
    "EllipsoidMesh",
    "icosphere",
    "sphere_level",
    "ellipsoid_mesh",
    "save_ellipsoids",
    "MESH_LIMIT",
    "mesh_bytes",
    "over_mesh_limit",
    "mesh_command",
    "skipped_mesh_message",
]

#: The Mahalanobis distance at which a Gaussian falls to half its peak, ``sqrt(2 ln 2)``: the default radius.
HALF_MAXIMUM_RADIUS = math.sqrt(2.0 * math.log(2.0))
#: Triangles a file holds at most when the level is chosen by count (about 32 MB of triangles and 16 MB of points);
#: the icosahedron is drawn beyond it whatever the count.
TRIANGLE_BUDGET = 2_000_000
#: The finest icosphere level chosen by count (162 points, 320 triangles); a finer one may be asked for.
MAX_LEVEL = 2
#: Gaussians up to which zero-shot inference and ``reconstruct`` write the mesh beside their ``.ply``: 102 MB and 4
#: million triangles at 200,000 (the icosahedron, 512 bytes a Gaussian; about 3 s to write on two CPU cores). The
#: Gaussians of a whole scan's zero-shot inference (about 100,000 to 200,000 for an abdomen) stay within it; a default
#: reconstruction grows to one Gaussian per 8 voxels (650,000 on a 256 x 256 x 80 scan: a 333 MB mesh of 13 million
#: triangles, about 7 s to write), which every run would write whether it is looked at or not, and a viewer would
#: have to load whole. Above it ``medgmae-ellipsoids`` writes the mesh from the ``.ply`` when asked
#: (:func:`skipped_mesh_message`).
MESH_LIMIT = 200_000
#: Points one file may hold: legacy VTK's polygon indices are 32-bit.
_MAX_POINTS = 2**31 - 1


class EllipsoidMesh(NamedTuple):
    """A mesh of one ellipsoid per Gaussian (:func:`ellipsoid_mesh`).

    Attributes:
        points: ``(K * V, 3)`` float64 vertices in the Gaussians' frame, ``V`` per Gaussian, Gaussian by Gaussian.
        triangles: ``(K * F, 3)`` int64 vertex indices, counterclockwise seen from outside.
        intensities: ``(K * V,)`` float32, each vertex's Gaussian's intensity.
        level: the icosphere level (:func:`icosphere`).
        radius: the Mahalanobis distance of every vertex from its Gaussian's centre.
    """

    points: np.ndarray
    triangles: np.ndarray
    intensities: np.ndarray
    level: int
    radius: float


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


def sphere_level(count: int, budget: int = TRIANGLE_BUDGET) -> int:
    """The finest icosphere level, up to :data:`MAX_LEVEL`, whose ``count`` ellipsoids hold at most ``budget``
    triangles; 0 (the icosahedron) when none does.

    Args:
        count: the number of Gaussians (0 or more).
        budget: the triangles a file may hold.

    Returns:
        The level for :func:`icosphere`.
    """
    if count < 0:
        raise ValueError(f"count must be 0 or more, got {count}")
    for level in range(MAX_LEVEL, 0, -1):
        if count * 20 * 4**level <= budget:
            return level
    return 0


def _checked_arrays(gaussians: Gaussians3D) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The means, scales, quaternions and intensities of one set of Gaussians as float64 NumPy arrays, checked."""
    if not isinstance(gaussians, Gaussians3D):
        raise ValueError(f"gaussians must be a Gaussians3D, got {type(gaussians).__name__}")
    if gaussians.batch_size != 1:
        raise ValueError(f"one set of Gaussians is written: got batch size {gaussians.batch_size}; index it first")
    arrays = [t.detach().to("cpu", torch.float64).numpy()[0] for t in gaussians.tensors()]
    for name, values in zip(("means", "scales", "quats", "intensities"), arrays):
        if not np.isfinite(values).all():
            bad = int((~np.isfinite(values.reshape(len(values), -1))).any(-1).sum())
            raise ValueError(f"{name} must be finite to be drawn: {bad} of {len(values)} Gaussians hold NaN or Inf")
    means, scales, quats, intensities = arrays
    if not (scales > 0).all():
        raise ValueError(f"scales must be positive to be drawn: {int((scales <= 0).any(-1).sum())} Gaussians have a "
                         "scale of 0 or less")  # fmt: skip
    if not (np.linalg.norm(quats, axis=-1) > 1e-12).all():
        raise ValueError("quats must be non-zero to be drawn (a zero quaternion is no rotation)")
    return means, scales, quats, intensities


def ellipsoid_mesh(gaussians: Gaussians3D, radius: float = HALF_MAXIMUM_RADIUS, level: int | None = None) -> EllipsoidMesh:
    """One ellipsoid per Gaussian: the icosphere's unit vectors ``u`` at ``centre + radius * R S u``.

    Args:
        gaussians: a :class:`Gaussians3D` with ``B == 1`` (``K == 0`` gives an empty mesh).
        radius: the Mahalanobis distance of the surface (positive; default the half maximum, module docstring).
        level: the icosphere level; ``None``: :func:`sphere_level` of the count.

    Returns:
        The :class:`EllipsoidMesh`, computed in float64.

    Raises:
        ValueError: a batch of several sets, non-finite values, a scale of 0 or less, a zero quaternion, a radius
            that is not a positive finite number, a bad level, or more points than a VTK file indexes.
    """
    means, scales, quats, intensities = _checked_arrays(gaussians)
    if not 0 < float(radius) < math.inf:
        raise ValueError(f"radius must be a positive finite Mahalanobis distance, got {radius!r}")
    level = sphere_level(len(means)) if level is None else level
    unit, triangles = icosphere(level)
    k, v = len(means), len(unit)
    if k * v > _MAX_POINTS:
        raise ValueError(f"{k} Gaussians of {v} points are more points than a legacy VTK file indexes ({_MAX_POINTS}); "
                         "give a lower level")  # fmt: skip
    rot = quaternion_to_rotation_matrix(torch.from_numpy(quats)).numpy()  # (K, 3, 3), normalised first
    axes = rot * (float(radius) * scales)[:, None, :]  # R S r: column j is axis j's half-length vector
    points = means[:, None, :] + np.einsum("kij,vj->kvi", axes, unit)
    faces = triangles[None] + (np.arange(k, dtype=np.int64) * v)[:, None, None]
    return EllipsoidMesh(points.reshape(-1, 3), faces.reshape(-1, 3), np.repeat(intensities.astype(np.float32), v),
                         int(level), float(radius))  # fmt: skip


def save_ellipsoids(
    path: str | os.PathLike, gaussians: Gaussians3D, radius: float = HALF_MAXIMUM_RADIUS, level: int | None = None
) -> Path:
    """Write the :func:`ellipsoid_mesh` of Gaussians in the world frame (RAS millimetres) as a binary legacy VTK
    polydata file, atomically (module docstring: the layout, the ``SPACE=RAS`` header, the sizes).

    An empty set of Gaussians writes a valid file of no points and no triangles (no ``POLYGONS`` section: VTK's
    reader reports ``POLYGONS 0 0`` as an error), as :func:`medgmae.ply.save_ply` writes a ``.ply`` of no vertices.

    Args:
        path: output file (``.vtk``: the ending 3D Slicer reads as a model).
        gaussians: a :class:`Gaussians3D` with ``B == 1``, in world millimetres, RAS.
        radius: the ellipsoids' Mahalanobis radius (default: the half maximum).
        level: the icosphere level; ``None``: chosen by count (:func:`sphere_level`).

    Returns:
        The path written.

    Raises:
        ValueError: as :func:`ellipsoid_mesh`.
    """
    mesh = ellipsoid_mesh(gaussians, radius, level)
    n, m = len(mesh.points), len(mesh.triangles)
    title = (f"medgmae ellipsoids: {gaussians.num_gaussians} Gaussians, {10 * 4**mesh.level + 2} points each, "
             f"Mahalanobis radius {mesh.radius:.6g}, world mm SPACE=RAS")  # fmt: skip
    polygons = np.empty((m, 4), dtype=">i4")
    polygons[:, 0], polygons[:, 1:] = 3, mesh.triangles
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(f"# vtk DataFile Version 4.2\n{title}\nBINARY\nDATASET POLYDATA\nPOINTS {n} float\n".encode("ascii"))
            f.write(mesh.points.astype(">f4").tobytes())
            if m:  # VTK's reader reports an error on 'POLYGONS 0 0', which 3D Slicer takes as a failed load
                f.write(f"\nPOLYGONS {m} {4 * m}\n".encode("ascii"))
                f.write(polygons.tobytes())
            f.write(f"\nPOINT_DATA {n}\nSCALARS intensity float 1\nLOOKUP_TABLE default\n".encode("ascii"))
            f.write(mesh.intensities.astype(">f4").tobytes())
            f.write(b"\n")
    return Path(path)


def mesh_bytes(count: int, level: int | None = None) -> int:
    """The bytes of the points, triangles and intensities of a file of ``count`` ellipsoids (its few header lines
    aside): ``16 V + 16 F`` a Gaussian (module docstring).

    Args:
        count: the number of Gaussians.
        level: the icosphere level; ``None``: :func:`sphere_level` of the count.
    """
    level = sphere_level(count) if level is None else level
    return count * 16 * ((10 * 4**level + 2) + 20 * 4**level)


def over_mesh_limit(count: int) -> bool:
    """Whether a run leaves out the mesh of ``count`` Gaussians: more than :data:`MESH_LIMIT`."""
    return count > MESH_LIMIT


def mesh_command(ply: str | os.PathLike, vtk: str | os.PathLike) -> str:
    """The shell command that writes the mesh of the Gaussians of ``ply`` to ``vtk``, paths absolute and quoted
    (``medgmae-ellipsoids``, :mod:`medgmae.ellipsoids_cli`)."""
    from medgmae.files import absolute_path

    return f"medgmae-ellipsoids {shlex.quote(str(absolute_path(ply)))} --out {shlex.quote(str(absolute_path(vtk)))}"


def skipped_mesh_message(count: int, ply: str | os.PathLike, vtk: str | os.PathLike) -> str:
    """The line a run gives where it leaves out the mesh of ``count`` Gaussians (:func:`over_mesh_limit`): the file
    not written, why, and :func:`mesh_command`.

    Args:
        count: the number of Gaussians.
        ply: the ``.ply`` the run wrote them to.
        vtk: the mesh file it would have written.
    """
    return (f"{Path(vtk).name} not written: {count:,} Gaussians, more than the {MESH_LIMIT:,} whose ellipsoids a run "
            f"writes (it would take {mesh_bytes(count) / 1e6:.0f} MB); write it with: {mesh_command(ply, vtk)}")
