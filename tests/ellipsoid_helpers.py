"""An independent reader of binary legacy VTK polydata files and the geometry the ellipsoid tests check them against
(covariances from SciPy's rotations, not the toolkit's), shared by the ellipsoid, zero-shot and reconstruction tests."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation


def read_vtk_polydata(path: str | Path) -> dict:
    """A binary legacy VTK ``DATASET POLYDATA`` file as written by the VTK format's own description: ``title``,
    ``points`` ``(N, 3)`` float64, ``polygons`` (a list of index arrays, any length), ``scalars`` (name -> ``(N,)``
    array of the point data), ``normals`` (name -> ``(N, 3)`` array of the point data's ``NORMALS``). Big-endian
    binary, as the format requires; anything else fails an assertion."""
    raw = Path(path).read_bytes()
    pos = 0

    def line() -> str:
        nonlocal pos
        end = raw.index(b"\n", pos)
        text, pos = raw[pos:end].decode("ascii"), end + 1
        return text.strip()

    assert line().startswith("# vtk DataFile Version ")
    out: dict = {"title": line(), "points": None, "polygons": [], "scalars": {}, "normals": {}}
    assert line() == "BINARY" and line() == "DATASET POLYDATA"
    point_count = None
    while pos < len(raw):
        words = line().split()
        if not words:
            continue
        if words[0] == "POINTS":
            n, kind = int(words[1]), words[2]
            assert kind == "float", kind
            out["points"] = np.frombuffer(raw, ">f4", 3 * n, pos).reshape(n, 3).astype(np.float64)
            pos += 12 * n
        elif words[0] == "POLYGONS":
            m, size = int(words[1]), int(words[2])
            ints, i = np.frombuffer(raw, ">i4", size, pos).astype(np.int64), 0
            pos += 4 * size
            while i < size:
                out["polygons"].append(ints[i + 1 : i + 1 + ints[i]])
                i += 1 + ints[i]
            assert len(out["polygons"]) == m and i == size
        elif words[0] == "POINT_DATA":
            point_count = int(words[1])
        elif words[0] == "SCALARS":
            assert point_count is not None and words[2] == "float" and words[3:] in ([], ["1"]), words
            assert line() == "LOOKUP_TABLE default"
            out["scalars"][words[1]] = np.frombuffer(raw, ">f4", point_count, pos).astype(np.float64)
            pos += 4 * point_count
        elif words[0] == "NORMALS":
            assert point_count is not None and len(words) == 3 and words[2] == "float", words
            out["normals"][words[1]] = np.frombuffer(raw, ">f4", 3 * point_count, pos).reshape(-1, 3).astype(np.float64)
            pos += 12 * point_count
        else:
            raise AssertionError(f"unexpected section {words}")
    return out


def covariance(scales: np.ndarray, quat_wxyz: np.ndarray) -> np.ndarray:
    """``R diag(s^2) R^T`` in float64, ``R`` from SciPy's (scalar-last, normalising) quaternion rotation."""
    w, x, y, z = np.asarray(quat_wxyz, np.float64)
    rot = Rotation.from_quat([x, y, z, w]).as_matrix()
    return rot @ np.diag(np.asarray(scales, np.float64) ** 2) @ rot.T


def mahalanobis(points: np.ndarray, centre: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """The Mahalanobis distance of each of ``points`` ``(V, 3)`` from ``centre`` under ``cov``, in float64."""
    d = np.asarray(points, np.float64) - centre
    return np.sqrt(np.einsum("vi,vi->v", d, np.linalg.solve(cov, d.T).T))


def per_gaussian(mesh: dict, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The points ``(K, V, 3)``, intensities ``(K, V)`` and triangles ``(K, F, 3)`` (indices into the Gaussian's own
    points) of a mesh of ``count`` ellipsoids; asserts that every polygon is a triangle of one Gaussian's points."""
    points = mesh["points"]
    v = len(points) // count
    assert len(points) == count * v
    triangles = np.array([p for p in mesh["polygons"]])
    assert triangles.ndim == 2 and triangles.shape[1] == 3
    f = len(triangles) // count
    triangles = triangles.reshape(count, f, 3)
    owner = triangles // v
    assert (owner == np.arange(count)[:, None, None]).all(), "a triangle joins the points of two Gaussians"
    return points.reshape(count, v, 3), mesh["scalars"]["intensity"].reshape(count, v), triangles - (np.arange(count) * v)[:, None, None]


def signed_volume(points: np.ndarray, triangles: np.ndarray) -> float:
    """The signed volume a closed triangle mesh encloses (positive when its triangles turn counterclockwise seen from
    outside), as the sum of the tetrahedra from the origin."""
    a, b, c = (points[triangles[:, j]] for j in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def icosahedron_volume_ratio() -> float:
    """The volume of a regular icosahedron inscribed in the unit sphere over the sphere's: edge ``a`` with
    circumradius ``a sqrt(10 + 2 sqrt 5) / 4 = 1`` and volume ``5 (3 + sqrt 5) a^3 / 12``."""
    a = 4.0 / math.sqrt(10.0 + 2.0 * math.sqrt(5.0))
    return 5.0 * (3.0 + math.sqrt(5.0)) * a**3 / 12.0 / (4.0 / 3.0 * math.pi)


def ellipsoid_normals(points: np.ndarray, centre: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """The outward unit normals of the ellipsoid ``(x - c)^T cov^-1 (x - c) = const`` at ``points`` ``(V, 3)``: the
    gradient ``cov^-1 (x - c)`` normalised, in float64."""
    grad = np.linalg.solve(cov, (np.asarray(points, np.float64) - centre).T).T
    return grad / np.linalg.norm(grad, axis=1, keepdims=True)


def facet_normals(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Each vertex's normal as the area-weighted mean of the normals of the triangles around it (the right-hand
    rule's, counterclockwise seen from the side they point to), normalised: what a viewer computes from the facets."""
    a, b, c = (points[triangles[:, j]] for j in range(3))
    weighted = np.cross(b - a, c - a)  # twice the area times the unit normal
    sums = np.zeros_like(points, dtype=np.float64)
    for j in range(3):
        np.add.at(sums, triangles[:, j], weighted)
    return sums / np.linalg.norm(sums, axis=1, keepdims=True)


def angles_degrees(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The angle between the rows of ``a`` and ``b`` ``(V, 3)`` in degrees."""
    cos = np.einsum("vi,vi->v", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
