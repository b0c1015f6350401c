"""The ellipsoid mesh's per-point normals (medgmae.ellipsoids): unit length, outward, the analytic normal of the
ellipsoid, ``Sigma^-1 (x - centre)`` normalised under a covariance built here from SciPy's rotations, at every vertex
the file holds; close to the normals computed from the facets themselves on a fine sphere (here in NumPy, and by
VTK's own reader and ``vtkPolyDataNormals`` where the ``vtk`` package is installed); and still outward, with the
triangles still turning outward, for Gaussians mapped from a voxel frame by an affine that mirrors (a voxel axis
running against its world axis, as well as LPS to RAS) with anisotropic spacing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from medgmae.ellipsoids import save_ellipsoids
from medgmae.gaussians import Gaussians3D

from ellipsoid_helpers import (angles_degrees, covariance, ellipsoid_normals, facet_normals, per_gaussian,
                               read_vtk_polydata, signed_volume)  # fmt: skip


def _random(rng: np.random.Generator, k: int, reach: float = 200.0) -> tuple[np.ndarray, ...]:
    """``k`` Gaussians: centres within ``reach`` mm of the origin, scales 0.5-20 mm (anisotropic up to 40x), any
    rotation (quaternions of any length and sign), intensities; float32 as the toolkit's tensors."""
    means = rng.uniform(-reach, reach, (k, 3))
    scales = np.exp(rng.uniform(math.log(0.5), math.log(20.0), (k, 3)))
    quats = rng.normal(size=(k, 4)) * rng.uniform(0.2, 5.0, (k, 1))
    return tuple(a.astype(np.float32) for a in (means, scales, quats, rng.uniform(0.0, 1.0, k)))


def _gaussians(means, scales, quats, intensities) -> Gaussians3D:
    return Gaussians3D(*(torch.from_numpy(np.ascontiguousarray(a))[None] for a in (means, scales, quats, intensities)))


def _normals(mesh: dict, count: int) -> np.ndarray:
    """The file's ``normals`` array, ``(K, V, 3)``, the only normals it holds."""
    assert list(mesh["normals"]) == ["normals"]
    return mesh["normals"]["normals"].reshape(count, -1, 3)


@pytest.mark.parametrize("seed", range(8))
def test_every_normal_is_the_ellipsoids_outward_unit_normal(tmp_path, seed):
    """At each vertex the file holds a float32 unit vector pointing away from the centre, the gradient of the
    Mahalanobis distance there (SciPy's covariance); within 0.05 degrees for centres up to 200 mm out (the float32
    points' own rounding, amplified by a 40x anisotropy), within 0.002 degrees for centres within 1 mm."""
    rng = np.random.default_rng(200 + seed)
    k, level, radius = int(rng.integers(1, 15)), seed % 4, [1.1774, 1.0, 3.0][seed % 3]
    for reach, tolerance in ((200.0, 0.05), (1.0, 0.002)):
        means, scales, quats, intensities = _random(rng, k, reach)
        path = save_ellipsoids(tmp_path / "e.vtk", _gaussians(means, scales, quats, intensities), radius, level)
        mesh = read_vtk_polydata(path)
        points, _, _ = per_gaussian(mesh, k)
        normals = _normals(mesh, k)
        assert normals.shape == points.shape and points.shape[1] == 10 * 4**level + 2
        np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=1e-6)
        for i in range(k):
            centre = means[i].astype(np.float64)
            assert (np.einsum("vi,vi->v", normals[i], points[i] - centre) > 0).all(), "a normal points inward"
            expected = ellipsoid_normals(points[i], centre, covariance(scales[i], quats[i]))
            assert angles_degrees(normals[i], expected).max() < tolerance


@pytest.mark.parametrize("seed", range(3))
def test_the_normals_agree_with_the_facets_on_a_fine_sphere(tmp_path, seed):
    """At level 5 (10,242 points a Gaussian) the normals computed from the triangles around each vertex (area-weighted,
    the right-hand rule of the triangles' order) lie within 4 degrees of the file's: the triangles turn the way the
    normals point, outward, and the normals are those of the surface drawn."""
    rng = np.random.default_rng(300 + seed)
    k = 3
    means, scales, quats, intensities = _random(rng, k)
    path = save_ellipsoids(tmp_path / "e.vtk", _gaussians(means, scales, quats, intensities), level=5)
    mesh = read_vtk_polydata(path)
    points, _, triangles = per_gaussian(mesh, k)
    normals = _normals(mesh, k)
    for i in range(k):
        assert angles_degrees(normals[i], facet_normals(points[i], triangles[i])).max() < 4.0


def _mirrored_voxel_gaussians(seed: int, k: int) -> tuple[Gaussians3D, np.ndarray, np.ndarray, np.ndarray]:
    """``k`` Gaussians in voxel coordinates, the same mapped to world mm by an affine of determinant below 0, and
    the world centres ``(K, 3)`` and covariances ``(K, 3, 3)`` computed here (``M c + t``, ``M Sigma M^T``).

    ``M``: an oblique grid of 0.7 x 0.9 x 2.5 mm voxels whose third axis runs against its world axis (slices stored
    from the head down: a reflection), taken from LPS to RAS (``diag(-1, -1, 1)``, itself a half turn about z)."""
    rng = np.random.default_rng(seed)
    voxel = (rng.uniform(0, 60, (k, 3)), rng.uniform(0.5, 6.0, (k, 3)), rng.normal(size=(k, 4)), rng.uniform(0, 1, k))
    oblique = Rotation.from_euler("xyz", [20.0, -35.0, 50.0], degrees=True).as_matrix()
    m = np.diag([-1.0, -1.0, 1.0]) @ oblique @ np.diag([0.7, 0.9, -2.5])
    t = np.array([120.0, 95.0, -40.0])
    assert np.linalg.det(m) < 0
    g = Gaussians3D(*(torch.tensor(a, dtype=torch.float32)[None] for a in voxel))
    world = g.transformed(torch.from_numpy(m), torch.from_numpy(t))
    means, scales, quats, _ = (a.astype(np.float64) for a in voxel)
    centres = means @ m.T + t
    covs = np.stack([m @ covariance(scales[i], quats[i]) @ m.T for i in range(k)])
    return world, centres, covs, m


def test_a_mirroring_affine_keeps_normals_and_triangles_outward(tmp_path):
    """Gaussians mapped from a voxel frame by a mirroring affine (LPS to RAS, a reversed slice axis) with anisotropic,
    oblique voxels: each normal the world ellipsoid's analytic one (under ``M Sigma M^T``), pointing away from its
    centre, every triangle facing away from it, each ellipsoid's signed volume positive, and the facets' normals on a
    fine sphere within 4 degrees of the file's."""
    k = 6
    world, centres, covs, _ = _mirrored_voxel_gaussians(11, k)
    for level in (1, 5):
        mesh = read_vtk_polydata(save_ellipsoids(tmp_path / f"m{level}.vtk", world, level=level))
        points, _, triangles = per_gaussian(mesh, k)
        normals = _normals(mesh, k)
        for i in range(k):
            out = points[i] - centres[i]
            assert (np.einsum("vi,vi->v", normals[i], out) > 0).all()
            assert angles_degrees(normals[i], ellipsoid_normals(points[i], centres[i], covs[i])).max() < 0.02
            a, b, c = (out[triangles[i][:, j]] for j in range(3))
            assert (np.einsum("ij,ij->i", np.cross(b - a, c - a), a + b + c) > 0).all(), "a triangle faces inward"
            assert signed_volume(out, triangles[i]) > 0
            if level == 5:
                assert angles_degrees(normals[i], facet_normals(points[i], triangles[i])).max() < 4.0


def _vtk_read(path) -> tuple[object, dict]:
    """VTK's own legacy reader's polydata of ``path`` and its points, normals and intensities as NumPy arrays."""
    vtk = pytest.importorskip("vtk")
    from vtk.util.numpy_support import vtk_to_numpy

    reader = vtk.vtkPolyDataReader()
    reader.SetFileName(str(path))
    reader.Update()
    assert reader.GetErrorCode() == 0
    data = reader.GetOutput()
    arrays = {"points": vtk_to_numpy(data.GetPoints().GetData()) if data.GetNumberOfPoints() else np.zeros((0, 3)),
              "normals": data.GetPointData().GetNormals(), "intensity": data.GetPointData().GetScalars()}  # fmt: skip
    for name in ("normals", "intensity"):
        assert arrays[name] is not None, f"VTK read no {name}"
        assert arrays[name].GetName() == name
        arrays[name] = vtk_to_numpy(arrays[name])
    return data, arrays


def test_vtk_reads_the_normals_and_computes_the_same_from_the_facets(tmp_path):
    """VTK's legacy reader (3D Slicer's) reads the file's points, normals and intensities as the format's reader of
    the test helpers does, the normals as the point data's normals; ``vtkPolyDataNormals`` (consistent ordering and
    auto-orientation on, no splitting) on the same mesh without its normals gives per-point normals within 6
    degrees of the file's at every point and 1 degree at 99 % of them at level 5 (its mean of the facets' normals,
    unweighted, strays most on a 40x anisotropic ellipsoid), for random Gaussians and for Gaussians mapped by a
    mirroring affine. An empty file reads without error."""
    vtk = pytest.importorskip("vtk")
    from vtk.util.numpy_support import vtk_to_numpy

    random = _gaussians(*_random(np.random.default_rng(400), 4))
    for name, g in (("random", random), ("mirrored", _mirrored_voxel_gaussians(12, 4)[0])):
        path = save_ellipsoids(tmp_path / f"{name}.vtk", g, level=5)
        data, arrays = _vtk_read(path)
        ours = read_vtk_polydata(path)
        np.testing.assert_array_equal(arrays["points"], ours["points"].astype(np.float32))
        np.testing.assert_array_equal(arrays["normals"], ours["normals"]["normals"].astype(np.float32))
        np.testing.assert_array_equal(arrays["intensity"], ours["scalars"]["intensity"].astype(np.float32))
        bare = vtk.vtkPolyData()
        bare.DeepCopy(data)
        bare.GetPointData().SetNormals(None)  # else vtkPolyDataNormals may pass the file's own through
        computer = vtk.vtkPolyDataNormals()
        computer.SetInputData(bare)
        computer.ConsistencyOn()
        computer.AutoOrientNormalsOn()
        computer.SplittingOff()
        computer.ComputePointNormalsOn()
        computer.Update()
        computed = vtk_to_numpy(computer.GetOutput().GetPointData().GetNormals()).astype(np.float64)
        assert len(computed) == len(arrays["normals"])
        apart = angles_degrees(arrays["normals"].astype(np.float64), computed)
        assert apart.max() < 6.0 and np.percentile(apart, 99) < 1.0, (name, apart.max(), np.percentile(apart, 99))
    empty = Gaussians3D(torch.zeros(1, 0, 3), torch.ones(1, 0, 3), torch.ones(1, 0, 4), torch.zeros(1, 0))
    data, arrays = _vtk_read(save_ellipsoids(tmp_path / "empty.vtk", empty))
    assert data.GetNumberOfPoints() == 0 and arrays["normals"].shape[0] == 0


def test_scales_far_apart_in_float64_give_unit_normals():
    """Scales 1e-200, 1e30 and 1 (float64 Gaussians built in Python): the squared norm of the unscaled normal
    underflowed to 0 and 8 of the 42 normals were NaN; each is now the analytic ``S^-1 u`` direction (no rotation),
    worked out here in logarithms (finite unit vectors only where a scale ratio falls below the subnormal range's
    precision)."""
    from medgmae.ellipsoids import ellipsoid_mesh
    from medgmae.icosphere import icosphere

    for scales in ((1e-200, 1e30, 1.0), (1e-300, 1e10, 1.0), (5e-324, 1.0, 1.0)):  # the last: finite and unit only
        g = Gaussians3D(torch.zeros(1, 1, 3, dtype=torch.float64), torch.tensor([[scales]], dtype=torch.float64),
                        torch.tensor([[[1.0, 0.0, 0.0, 0.0]]], dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64))
        normals = np.asarray(ellipsoid_mesh(g, level=1).normals)
        unit = np.asarray(icosphere(1)[0], dtype=np.float64)
        with np.errstate(divide="ignore"):  # log|u| of a zero component: -inf, a zero in the direction
            logs = np.log(np.abs(unit)) - np.log(np.asarray(scales))  # of |u_i| / s_i, which may overflow as such
        direction = np.sign(unit) * np.exp(logs - logs.max(-1, keepdims=True))
        expected = direction / np.linalg.norm(direction, axis=-1, keepdims=True)
        assert np.isfinite(normals).all(), scales
        np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=1e-12)
        if min(scales) > 1e-320:  # 5e-324 / 1 is below the subnormal range's precision: directions are rounded
            np.testing.assert_allclose(normals, expected, atol=1e-12)
