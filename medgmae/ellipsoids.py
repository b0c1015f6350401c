"""Gaussians as a triangle mesh of ellipsoids, one per Gaussian, in a legacy VTK file that 3D Slicer draws.

The ``.ply`` of :mod:`medgmae.ply` holds the Gaussians as vertices without faces (the 3DGS convention), which 3D
Slicer loads as points without cells and does not draw. This module writes, beside it, one closed, outward-oriented
low-poly ellipsoid per Gaussian: an icosphere of unit vectors ``u`` mapped to ``centre + r R S u``, ``R`` the
Gaussian's rotation and ``S = diag(scales)``, so that every vertex lies at Mahalanobis distance ``r`` from the centre.
Each vertex carries the ellipsoid's exact outward unit normal there, ``R S^-1 u`` normalised (the direction of
``Sigma^-1 (x - centre)``, ``Sigma = R S^2 R^T``: the gradient of the Mahalanobis distance), so that a viewer shades
the few facets as the smooth surface they stand for: 3D Slicer computes no normals for a model it loads, and draws
one without them flat, facet by facet. ``R S`` has a positive determinant whatever the frame the Gaussians were
mapped from (an affine that mirrors, such as a scan's whose slice axis runs against its world axis, maps each
covariance, re-factorised into a rotation and positive scales: :meth:`~medgmae.gaussians.Gaussians3D.transformed`),
so the triangles turn counterclockwise seen from outside, the side the normals point to.

``r`` is the **half-maximum** radius ``sqrt(2 ln 2) = 1.1774`` by default: each ellipsoid is the surface where its
Gaussian falls to half its peak, its full width at half maximum along each of its axes, the usual measure of a
blob's size in an image (inside it the Gaussian adds more than half its intensity to the rendering). One standard
deviation (61 % of the peak) draws the Gaussians smaller; the renderer's cutoff, 3 (1 % of the peak), 2.5 times
wider, where neighbours' shells would hide one another.

The file is a binary legacy VTK polydata file (version 4.2, the one 3D Slicer writes): ``POINTS`` (float32, world
millimetres), ``POLYGONS`` (triangles) and two point-data arrays: the scalars ``intensity`` (float32: each vertex
carries its Gaussian's intensity, as the ``.ply`` holds it) and the ``NORMALS`` ``normals`` (float32, unit length,
outward). Its header line carries 3D Slicer's ``SPACE=RAS``: Slicer reads the points as RAS (a file without it is
taken as LPS, mirrored in x and y against the scan), and a model with point scalars opens coloured by them. (A PLY
does not serve: VTK's PLY reader, Slicer's, keeps of the vertex properties only the position, normal, texture
coordinates and ``red`` / ``green`` / ``blue`` / ``alpha`` bytes, and drops a float intensity.) Ellipsoid ``i`` is
the ``i``-th Gaussian, in the ``.ply``'s order: its points are rows ``i * V`` to ``(i + 1) * V - 1``, ``V`` the
points of one ellipsoid. Every Gaussian is drawn, faint ones too: the reconstruction prunes near-zero intensities
itself, and Slicer's scalar threshold hides the faint ones on screen.

The sphere's resolution follows the count (:func:`sphere_level`), so that a file stays near 66 MB or less up to
100,000 Gaussians: a Gaussian costs ``28 V + 16 F`` bytes (``V`` points of 12 bytes, their 12 bytes of normal and 4
of intensity; ``F`` triangles of 16), 9,656 bytes at level 2 (162 points, 320 triangles; up to 6,250 Gaussians),
2,456 at level 1 (42, 80; up to 25,000), 656 at level 0, the icosahedron (12, 20; beyond), so 200,000 Gaussians
take 131 MB. Gaussians must be in the world frame (RAS millimetres, the toolkit's world): the ``SPACE=RAS`` comment
says so.

A file is built and written a part at a time (:data:`_CHUNK_POINTS` points), so that writing one takes a few tens
of MB of memory whatever its size; one that would not fit in the free room of its folder's file system is refused
before anything is written, naming both sizes and the finest level that fits (level 6, 40,962 points a
Gaussian, takes 2.46 MB a Gaussian: 123 GB for 50,000). Points beyond float32's range (a radius of ``1e308``) are
refused, as the file holds them in float32.

Zero-shot inference and ``medgmae-recon reconstruct`` write the mesh beside their ``.ply`` only up to
:data:`MESH_LIMIT` Gaussians (200,000: 131 MB). Above it they write none (and remove one an earlier run left under
that name, which would not be this run's Gaussians) and say so in one line with the command that writes it from the
``.ply`` (:func:`skipped_mesh_message`): ``medgmae-ellipsoids GAUSSIANS.ply --out FILE.vtk``
(:mod:`medgmae.ellipsoids_cli`), which also draws a ``.ply`` at another ``--radius`` or ``--level``.
"""

from __future__ import annotations

import errno
import math
import os
import shlex
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from medgmae.files import atomic_write
from medgmae.gaussians import Gaussians3D
from medgmae.host_memory import memory_limit
from medgmae.icosphere import icosphere
from medgmae.rotations import quaternion_to_rotation_matrix
from medgmae.words import byte_size

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
#: Triangles a file holds at most when the level is chosen by count (about 32 MB of triangles and 28 MB of points
#: with their normals and intensities); the icosahedron is drawn beyond it whatever the count.
TRIANGLE_BUDGET = 2_000_000
#: The finest icosphere level chosen by count (162 points, 320 triangles); a finer one may be asked for.
MAX_LEVEL = 2
#: Gaussians up to which zero-shot inference and ``reconstruct`` write the mesh beside their ``.ply``: 131 MB and 4
#: million triangles at 200,000 (the icosahedron, 656 bytes a Gaussian; about 3 s to write on two CPU cores). Zero-shot
#: inference keeps each window's own Gaussians, so a scan gives at most ``num_gaussians`` times its windows: with the
#: pre-training bundle's defaults (256 Gaussians a 96^3 window of 1.5 mm voxels, no overlap) a whole abdomen, up to
#: 432 mm a side, is 3 x 3 x 3 windows: at most 6,912 Gaussians, and 48,384 for MedGMAE* (levels of 1, 2 and 4 times
#: 256: 1,792 a window); 4 windows a side (up to 576 mm) give 16,384 and 114,688. A default reconstruction grows to
#: one Gaussian per 8 voxels (650,000 on a 256 x 256 x 80 scan: a 426 MB mesh of 13 million triangles, about 7 s to
#: write), which every run would write whether it is looked at or not, and a viewer would have to load whole. Above
#: it ``medgmae-ellipsoids`` writes the mesh from the ``.ply`` when asked (:func:`skipped_mesh_message`).
MESH_LIMIT = 200_000
#: Points one file may hold: legacy VTK's polygon indices are 32-bit.
_MAX_POINTS = 2**31 - 1
#: The largest float32: the file holds its points in float32.
_FLOAT32_MAX = float(np.finfo(np.float32).max)
#: Points a file is built with at a time (6 MB of float64 points or normals, 13 MB of their triangles' indices).
_CHUNK_POINTS = 2**18


class EllipsoidMesh(NamedTuple):
    """A mesh of one ellipsoid per Gaussian (:func:`ellipsoid_mesh`).

    Attributes:
        points: ``(K * V, 3)`` float64 vertices in the Gaussians' frame, ``V`` per Gaussian, Gaussian by Gaussian.
        triangles: ``(K * F, 3)`` int64 vertex indices, counterclockwise seen from outside.
        intensities: ``(K * V,)`` float32, each vertex's Gaussian's intensity.
        normals: ``(K * V, 3)`` float64 unit outward normals of the ellipsoids at the vertices (:func:`_normals`).
        level: the icosphere level (:func:`icosphere`).
        radius: the Mahalanobis distance of every vertex from its Gaussian's centre.
    """

    points: np.ndarray
    triangles: np.ndarray
    intensities: np.ndarray
    normals: np.ndarray
    level: int
    radius: float


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


class _Parts(NamedTuple):
    """Checked Gaussians (float64 arrays, their rotation matrices computed once for the points and the normals), the
    radius and the icosphere a mesh is built from (:func:`_parts`)."""

    means: np.ndarray
    scales: np.ndarray
    rotations: np.ndarray
    intensities: np.ndarray
    radius: float
    level: int
    unit: np.ndarray
    triangles: np.ndarray


def _parts(gaussians: Gaussians3D, radius: float, level: int | None) -> _Parts:
    """:func:`ellipsoid_mesh`'s arguments checked (its ``Raises``), with the icosphere of the level."""
    means, scales, quats, intensities = _checked_arrays(gaussians)
    if not 0 < float(radius) < math.inf:
        raise ValueError(f"radius must be a positive finite Mahalanobis distance, got {radius!r}")
    level = sphere_level(len(means)) if level is None else level
    unit, triangles = icosphere(level)
    k, v = len(means), len(unit)
    if k * v > _MAX_POINTS:
        raise ValueError(f"{k} Gaussians of {v} points are more points than a legacy VTK file indexes ({_MAX_POINTS}); "
                         "give a lower level")  # fmt: skip
    with np.errstate(over="ignore"):  # a huge radius: inf, refused below
        reach = np.abs(means).max(-1) + float(radius) * scales.max(-1) if k else np.zeros(1)
    if not reach.max() < _FLOAT32_MAX:  # |R S u| <= max(S) for a unit u: no point lies farther out on any axis
        i = int(np.argmax(reach))
        raise ValueError(f"the ellipsoids reach {reach[i]:.3g} from the origin (a centre {np.abs(means[i]).max():.3g} "
                         f"out, plus radius {float(radius):.6g} times a scale of {scales[i].max():.3g}): beyond "
                         f"{_FLOAT32_MAX:.3g}, the largest float32, in which the file holds its points; give a smaller "
                         "radius")  # fmt: skip
    rotations = quaternion_to_rotation_matrix(torch.from_numpy(quats)).numpy()  # normalised first
    return _Parts(means, scales, rotations, intensities, float(radius), int(level), unit, triangles)


def _points(parts: _Parts, start: int, stop: int) -> np.ndarray:
    """The ``(n * V, 3)`` float64 vertices of Gaussians ``start`` to ``stop - 1``."""
    axes = parts.rotations[start:stop] * (parts.radius * parts.scales[start:stop])[:, None, :]  # R S r: column j is
    # axis j's half-length vector
    return (parts.means[start:stop, None, :] + parts.unit @ axes.transpose(0, 2, 1)).reshape(-1, 3)  # R S r u


def _normals(parts: _Parts, start: int, stop: int) -> np.ndarray:
    """The ``(n * V, 3)`` float64 unit outward normals at the vertices of Gaussians ``start`` to ``stop - 1``.

    At ``x = centre + r R S u`` the gradient of the Mahalanobis distance, ``Sigma^-1 (x - centre) = r R S^-1 u``, is
    normal to the ellipsoid and points outward (its dot product with ``x - centre`` is ``r^2 |u|^2 > 0``); it is
    computed as ``R (min(S) S^-1) u``, whose factors lie in (0, 1], so that no ``1 / s`` overflows, and normalised
    (after its largest component is made 1, so that scales apart by more than 1e154 in float64 give no 0 / 0).
    """
    scales = parts.scales[start:stop]
    inverse = parts.rotations[start:stop] * (scales.min(-1, keepdims=True) / scales)[:, None, :]  # R min(S) S^-1
    normals = (parts.unit @ inverse.transpose(0, 2, 1)).reshape(-1, 3)
    normals /= np.abs(normals).max(-1, keepdims=True)  # largest component 1 first: no squared norm underflows to 0
    return normals / np.sqrt(np.einsum("ni,ni->n", normals, normals))[:, None]


def _faces(parts: _Parts, start: int, stop: int) -> np.ndarray:
    """The ``(n * F, 3)`` int64 triangles of Gaussians ``start`` to ``stop - 1``, indexing the whole mesh's points."""
    offsets = np.arange(start, stop, dtype=np.int64) * len(parts.unit)
    return (parts.triangles[None] + offsets[:, None, None]).reshape(-1, 3)


def ellipsoid_mesh(gaussians: Gaussians3D, radius: float = HALF_MAXIMUM_RADIUS, level: int | None = None) -> EllipsoidMesh:
    """One ellipsoid per Gaussian: the icosphere's unit vectors ``u`` at ``centre + radius * R S u``.

    The whole mesh is built in memory: 52 bytes a point (its float64 position and normal, its float32 intensity)
    and 24 a triangle (:func:`save_ellipsoids` builds its file a part at a time instead).

    Args:
        gaussians: a :class:`Gaussians3D` with ``B == 1`` (``K == 0`` gives an empty mesh).
        radius: the Mahalanobis distance of the surface (positive; default the half maximum, module docstring).
        level: the icosphere level; ``None``: :func:`sphere_level` of the count.

    Returns:
        The :class:`EllipsoidMesh`, computed in float64.

    Raises:
        ValueError: a batch of several sets, non-finite values, a scale of 0 or less, a zero quaternion, a radius
            that is not a positive finite number, a bad level, more points than a VTK file indexes, points beyond
            float32's range (the file's), or arrays larger than the memory this process may use (the machine's, or
            a cgroup or address-space limit: :func:`medgmae.host_memory.memory_limit`).
    """
    parts = _parts(gaussians, radius, level)
    k, v, f = len(parts.means), len(parts.unit), len(parts.triangles)
    need, memory = k * (52 * v + 24 * f), memory_limit()
    if memory is not None and need > memory:
        raise ValueError(f"the mesh of {k:,} Gaussians at level {parts.level} takes {byte_size(need, binary=True)} of "
                         f"arrays, more than the {byte_size(memory, binary=True)} of memory this process may use (the "
                         "machine's memory, or a cgroup or address-space limit): give a lower level, or write it with "
                         "save_ellipsoids, which builds it a part at a time")  # fmt: skip
    return EllipsoidMesh(_points(parts, 0, k), _faces(parts, 0, k), np.repeat(parts.intensities.astype(np.float32), v),
                         _normals(parts, 0, k), parts.level, parts.radius)  # fmt: skip


def save_ellipsoids(
    path: str | os.PathLike, gaussians: Gaussians3D, radius: float = HALF_MAXIMUM_RADIUS, level: int | None = None
) -> Path:
    """Write the :func:`ellipsoid_mesh` of Gaussians in the world frame (RAS millimetres) as a binary legacy VTK
    polydata file, atomically, a part at a time (module docstring: the layout, the ``SPACE=RAS`` header, the sizes).

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
        ValueError: as :func:`ellipsoid_mesh` (but for its memory).
        OutputWriteError: the file would not fit in the free room of its folder's file system (checked before
            anything is written), or a write refused for want of room or permission.
    """
    parts = _parts(gaussians, radius, level)
    k, v, f = len(parts.means), len(parts.unit), len(parts.triangles)
    _check_room(Path(path), k, parts.level)
    n, m, per = k * v, k * f, max(1, _CHUNK_POINTS // v)
    spans = [(start, min(start + per, k)) for start in range(0, k, per)]
    title = (f"medgmae ellipsoids: {gaussians.num_gaussians} Gaussians, {v} points each, "
             f"Mahalanobis radius {parts.radius:.6g}, world mm SPACE=RAS")  # fmt: skip
    with atomic_write(path) as tmp, open(tmp, "wb") as out:
        out.write(f"# vtk DataFile Version 4.2\n{title}\nBINARY\nDATASET POLYDATA\nPOINTS {n} float\n".encode("ascii"))
        for start, stop in spans:
            out.write(_points(parts, start, stop).astype(">f4").tobytes())
        if m:  # VTK's reader reports an error on 'POLYGONS 0 0', which 3D Slicer takes as a failed load
            out.write(f"\nPOLYGONS {m} {4 * m}\n".encode("ascii"))
            for start, stop in spans:
                faces = _faces(parts, start, stop)
                polygons = np.empty((len(faces), 4), dtype=">i4")
                polygons[:, 0], polygons[:, 1:] = 3, faces
                out.write(polygons.tobytes())
        out.write(f"\nPOINT_DATA {n}\nSCALARS intensity float 1\nLOOKUP_TABLE default\n".encode("ascii"))
        for start, stop in spans:
            out.write(np.repeat(parts.intensities[start:stop].astype(">f4"), v).tobytes())
        out.write(b"\nNORMALS normals float\n")
        for start, stop in spans:
            out.write(_normals(parts, start, stop).astype(">f4").tobytes())
        out.write(b"\n")
    return Path(path)


def _check_room(path: Path, count: int, level: int) -> None:
    """Raise :class:`~medgmae.write_failures.OutputWriteError` (no room) when the file of ``count`` ellipsoids at
    ``level`` would not fit in the free room of the file system of ``path``'s folder, naming both sizes and the
    finest level that fits; nothing where the free room cannot be read."""
    from medgmae.write_failures import OutputWriteError, free_room

    room = free_room(path.absolute().parent)  # a folder atomic_write makes: the room above it
    if room is None:
        return
    folder, free = room
    size = mesh_bytes(count, level)
    if size <= free:
        return
    fits = next((lower for lower in range(level - 1, -1, -1) if mesh_bytes(count, lower) <= free), None)
    advice = (f"give a lower level (level {fits}: {byte_size(mesh_bytes(count, fits))})" if fits is not None
              else "free room there, or write it to another file system")  # fmt: skip
    said = (f"{path} could not be written (no room: the ellipsoids of {count:,} Gaussians at level {level} take "
            f"{byte_size(size)}, and {folder} has {byte_size(free)} free): {advice}. Nothing of it was kept")
    raise OutputWriteError(errno.ENOSPC, said, os.fspath(path))


def mesh_bytes(count: int, level: int | None = None) -> int:
    """The bytes of the points, triangles, intensities and normals of a file of ``count`` ellipsoids (its few header
    lines aside): ``28 V + 16 F`` a Gaussian (module docstring).

    Args:
        count: the number of Gaussians.
        level: the icosphere level; ``None``: :func:`sphere_level` of the count.
    """
    level = sphere_level(count) if level is None else level
    return count * (28 * (10 * 4**level + 2) + 16 * 20 * 4**level)


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
            f"writes (it would take {byte_size(mesh_bytes(count))}); write it with: {mesh_command(ply, vtk)}")
