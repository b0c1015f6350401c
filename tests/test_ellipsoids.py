"""The Gaussians as a mesh of ellipsoids 3D Slicer draws (medgmae.ellipsoids): every vertex at the stated Mahalanobis
radius of a covariance built here from SciPy's rotations, every ellipsoid closed and turned outward with the volume
of the ellipsoid within the icosphere's discretisation bound, the intensities carried, the file read by a reader of
the legacy VTK format written in the test helpers, the level chosen by count and the sizes it gives, bad input
refused before anything is written."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from medgmae.ellipsoids import HALF_MAXIMUM_RADIUS, save_ellipsoids, sphere_level
from medgmae.gaussians import Gaussians3D

from ellipsoid_helpers import (covariance, icosahedron_volume_ratio, mahalanobis, per_gaussian, read_vtk_polydata,
                               signed_volume)  # fmt: skip


def _random_gaussians(rng: np.random.Generator, k: int) -> tuple[np.ndarray, ...]:
    """``k`` Gaussians in world mm: centres within 200 mm of the origin, scales 0.5-20 mm (anisotropic up to 40x),
    quaternions of any length and sign, intensities of either sign; float32 as the toolkit's tensors."""
    means = rng.uniform(-200.0, 200.0, (k, 3))
    scales = np.exp(rng.uniform(math.log(0.5), math.log(20.0), (k, 3)))
    quats = rng.normal(size=(k, 4)) * rng.uniform(0.2, 5.0, (k, 1))
    intensities = rng.uniform(-0.5, 2.0, k)
    return tuple(a.astype(np.float32) for a in (means, scales, quats, intensities))


def _gaussians(means, scales, quats, intensities) -> Gaussians3D:
    return Gaussians3D(*(torch.from_numpy(np.ascontiguousarray(a))[None] for a in (means, scales, quats, intensities)))


@pytest.mark.parametrize("seed", range(12))
def test_every_vertex_lies_at_the_stated_radius_of_its_gaussian(tmp_path, seed):
    """Each of the K ellipsoids has ``10 * 4^L + 2`` points, all at the Mahalanobis radius (the half maximum by
    default) from its Gaussian's centre under ``R diag(s^2) R^T`` built with SciPy, the vertices' mean at the centre,
    and each point carrying its Gaussian's intensity; the header carries Slicer's ``SPACE=RAS``."""
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 30))
    level = [None, 0, 1, 2, 3][seed % 5]
    radius = [HALF_MAXIMUM_RADIUS, 1.0, 3.0][seed % 3]
    means, scales, quats, intensities = _random_gaussians(rng, k)
    path = save_ellipsoids(tmp_path / "e.vtk", _gaussians(means, scales, quats, intensities), radius=radius, level=level)
    mesh = read_vtk_polydata(path)
    assert "SPACE=RAS" in mesh["title"]
    points, carried, _ = per_gaussian(mesh, k)
    expected_level = 2 if level is None else level  # fewer than 6,250 Gaussians: the finest chosen by count
    assert points.shape[1] == 10 * 4**expected_level + 2
    for i in range(k):
        cov = covariance(scales[i], quats[i])
        distance = mahalanobis(points[i], means[i].astype(np.float64), cov)
        np.testing.assert_allclose(distance, radius, rtol=2e-4)  # float32 points of a file in world mm
        np.testing.assert_allclose(points[i].mean(0), means[i], atol=2e-4 * radius * scales[i].max() + 1e-4)
        assert (carried[i] == np.float64(intensities[i])).all()


@pytest.mark.parametrize("seed", range(8))
def test_each_ellipsoid_is_closed_and_turned_outward(tmp_path, seed):
    """Each ellipsoid is a closed surface (every edge in both directions once, Euler characteristic 2), every
    triangle faces away from the centre, and its signed volume is positive and that of the ellipsoid,
    ``4/3 pi r^3 sqrt(det Sigma)``, times the inscribed polyhedron's share, which lies between ``h^3`` (``h``: its
    faces' least distance from the centre on the unit sphere) and 1; the icosahedron's share exactly."""
    rng = np.random.default_rng(100 + seed)
    k, level = int(rng.integers(1, 12)), seed % 3
    means, scales, quats, intensities = _random_gaussians(rng, k)
    radius = HALF_MAXIMUM_RADIUS
    path = save_ellipsoids(tmp_path / "e.vtk", _gaussians(means, scales, quats, intensities), level=level)
    points, _, triangles = per_gaussian(read_vtk_polydata(path), k)
    for i in range(k):
        edges = [tuple(e) for t in triangles[i].tolist() for e in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0]))]
        assert len(set(edges)) == len(edges) and all((b, a) in set(edges) for a, b in edges)
        assert len(points[i]) - len(edges) // 2 + len(triangles[i]) == 2
        cov = covariance(scales[i], quats[i])
        # onto the unit sphere: u = L^-1 (x - c) / r, Sigma = L L^T; an orientation-preserving linear map
        unit = np.linalg.solve(np.linalg.cholesky(cov), (points[i] - means[i]).T).T / radius
        a, b, c = (unit[triangles[i][:, j]] for j in range(3))
        normals = np.cross(b - a, c - a)
        heights = np.einsum("ij,ij->i", normals, a) / np.linalg.norm(normals, axis=1)
        assert (heights > 0).all(), "a triangle faces inward"
        share = signed_volume(points[i] - means[i], triangles[i]) / (4 / 3 * math.pi * radius**3 * math.sqrt(np.linalg.det(cov)))
        assert heights.min() ** 3 * (1 - 1e-4) <= share <= 1 + 1e-4, (share, heights.min())
        if level == 0:
            assert share == pytest.approx(icosahedron_volume_ratio(), rel=1e-4)


def test_the_level_follows_the_count_and_the_sizes_are_as_stated(tmp_path):
    """The finest icosphere whose ellipsoids hold at most 2 million triangles: 162 points up to 6,250 Gaussians, 42 up
    to 25,000, the icosahedron beyond; a Gaussian costs 28 bytes a point (3 float32 coordinates, 3 of its normal, 1
    intensity) and 16 a triangle (its count and 3 int32 indices): 9,656, 2,456 and 656 bytes, so 100,000 Gaussians
    take 66 MB and 200,000 take 131 MB; the largest file the levels give up to 100,000 Gaussians, 66 MB."""
    assert [sphere_level(n) for n in (0, 1, 6250, 6251, 25000, 25001, 200_000)] == [2, 2, 2, 1, 1, 0, 0]
    rng = np.random.default_rng(7)
    for level, per in ((2, 9656), (1, 2456), (0, 656)):
        v, f = 10 * 4**level + 2, 20 * 4**level
        assert per == v * (12 + 12 + 4) + f * 4 * 4
        k = 40
        path = save_ellipsoids(tmp_path / f"e{level}.vtk", _gaussians(*_random_gaussians(rng, k)), level=level)
        header = path.stat().st_size - k * per
        assert 0 < header < 400, header  # the section lines
        assert len(read_vtk_polydata(path)["points"]) == k * (10 * 4**level + 2)
    assert round(100_000 * 656 / 1e6) == 66 and round(200_000 * 656 / 1e6) == 131
    assert max(round(n * per / 1e6) for n, per in ((6250, 9656), (25_000, 2456), (100_000, 656))) == 66


def test_the_quaternions_length_does_not_matter(tmp_path):
    """A quaternion and 3.7 times it (or its negative) draw the same ellipsoid."""
    means, scales, quats, intensities = _random_gaussians(np.random.default_rng(3), 5)
    one = read_vtk_polydata(save_ellipsoids(tmp_path / "a.vtk", _gaussians(means, scales, quats, intensities)))
    other = read_vtk_polydata(save_ellipsoids(tmp_path / "b.vtk", _gaussians(means, scales, -3.7 * quats, intensities)))
    np.testing.assert_allclose(one["points"], other["points"], atol=1e-4)


def test_no_gaussians_write_an_empty_mesh(tmp_path):
    """An empty set (a reconstruction that pruned every Gaussian) writes a file of no points and no polygons, as the
    .ply of no vertices beside it: no 'POLYGONS 0 0' section, which VTK's reader reports as an error."""
    empty = Gaussians3D(torch.zeros(1, 0, 3), torch.ones(1, 0, 3), torch.ones(1, 0, 4), torch.zeros(1, 0))
    path = save_ellipsoids(tmp_path / "e.vtk", empty)
    mesh = read_vtk_polydata(path)
    assert mesh["points"].shape == (0, 3) and mesh["polygons"] == [] and b"POLYGONS" not in path.read_bytes()
    assert "0 Gaussians" in mesh["title"] and "SPACE=RAS" in mesh["title"]


def _bad(what: str) -> tuple[Gaussians3D, dict]:
    """One bad input of each kind, and the keywords to pass."""
    means, scales, quats, intensities = (a[None] for a in _random_gaussians(np.random.default_rng(0), 4))
    if what == "batch":
        return Gaussians3D(*(torch.from_numpy(np.concatenate([a, a])) for a in (means, scales, quats, intensities))), {}
    arrays = {"means": means, "scales": scales, "quats": quats, "intensities": intensities}
    name, value = {"nan": ("means", np.nan), "inf": ("scales", np.inf), "nan intensity": ("intensities", np.nan),
                   "zero scale": ("scales", 0.0), "zero quat": ("quats", 0.0)}.get(what, ("means", None))  # fmt: skip
    if value is not None:
        arrays[name] = arrays[name].copy()
        arrays[name][0, 2] = value
    kwargs = {"radius 0": {"radius": 0.0}, "radius nan": {"radius": float("nan")}, "level 7": {"level": 7},
              "level 1.5": {"level": 1.5}, "level True": {"level": True}}.get(what, {})  # fmt: skip
    return Gaussians3D(*(torch.from_numpy(arrays[n]) for n in ("means", "scales", "quats", "intensities"))), kwargs


@pytest.mark.parametrize("what, said", [
    ("batch", "one set of Gaussians is written: got batch size 2"),
    ("nan", "means must be finite to be drawn: 1 of 4 Gaussians hold NaN or Inf"),
    ("inf", "scales must be finite to be drawn: 1 of 4"),
    ("nan intensity", "intensities must be finite to be drawn: 1 of 4"),
    ("zero scale", "scales must be positive to be drawn: 1 Gaussians have a scale of 0 or less"),
    ("zero quat", "quats must be non-zero to be drawn"),
    ("radius 0", "radius must be a positive finite Mahalanobis distance, got 0.0"),
    ("radius nan", "radius must be a positive finite Mahalanobis distance, got nan"),
    ("level 7", "level must be a whole number from 0 to 6"),
    ("level 1.5", "level must be a whole number from 0 to 6"),
    ("level True", "level must be a whole number from 0 to 6"),
])  # fmt: skip
def test_bad_input_is_refused_and_an_earlier_file_kept(tmp_path, what, said):
    """Non-finite values, a scale of 0, a zero quaternion, a batch of several sets, a bad radius or level: a
    ValueError naming it, before anything is written (a file from an earlier run stays as it was)."""
    path = tmp_path / "e.vtk"
    path.write_bytes(b"earlier")
    gaussians, kwargs = _bad(what)
    with pytest.raises(ValueError, match="^" + re.escape(said)):
        save_ellipsoids(path, gaussians, **kwargs)
    assert path.read_bytes() == b"earlier" and sorted(p.name for p in tmp_path.iterdir()) == ["e.vtk"]


@pytest.mark.parametrize("count, level", [(3, 0), (5, 1), (4, 2), (300_000, None)])
def test_mesh_bytes_is_the_size_of_the_file_less_its_header(tmp_path, count, level):
    """The file is exactly its section lines (the legacy format's, the title as written) and its binary arrays: ``N``
    points of 3 float32, ``M`` polygons of a count and 3 int32 indices, ``N`` float32 intensities and ``N`` normals of
    3 float32; :func:`mesh_bytes` is the arrays' part, and the limit's size the 656 bytes an icosahedron's 12 points
    and 20 triangles take."""
    from medgmae.ellipsoids import MESH_LIMIT, mesh_bytes

    g = Gaussians3D(*(torch.from_numpy(a)[None] for a in _random_gaussians(np.random.default_rng(count), count)))
    path = save_ellipsoids(tmp_path / "m.vtk", g, level=level)
    v = 10 * 4 ** (sphere_level(count) if level is None else level) + 2
    n, m = count * v, count * 2 * (v - 2)  # a closed triangulated sphere: F = 2 V - 4
    title = read_vtk_polydata(path)["title"]
    lines = (f"# vtk DataFile Version 4.2\n{title}\nBINARY\nDATASET POLYDATA\nPOINTS {n} float\n"
             f"\nPOLYGONS {m} {4 * m}\n\nPOINT_DATA {n}\nSCALARS intensity float 1\nLOOKUP_TABLE default\n"
             "\nNORMALS normals float\n\n")  # fmt: skip
    arrays = 12 * n + 16 * m + 4 * n + 12 * n
    assert path.stat().st_size == len(lines) + arrays
    assert mesh_bytes(count, level) == arrays
    assert mesh_bytes(MESH_LIMIT) == MESH_LIMIT * (12 * 28 + 20 * 16) == MESH_LIMIT * 656


def test_the_limit_is_the_one_the_help_and_docs_state():
    """The reconstruction's help (which loads no torch, so states it as a number), the README and the zero-shot
    bundle's README give the limit the runs apply, and its size."""
    from pathlib import Path

    from medgmae.ellipsoids import MESH_LIMIT, mesh_bytes
    from recon.cli import EPILOG, __doc__ as recon_doc

    root = Path(__file__).resolve().parents[1]
    stated = f"{MESH_LIMIT:,}"
    for text in (EPILOG, recon_doc, (root / "README.md").read_text(encoding="utf-8"),
                 (root / "bundles/medgmae_pretrain/docs/README.md").read_text(encoding="utf-8")):  # fmt: skip
        assert f"up to {stated} Gaussians" in " ".join(text.split())
    assert f"{mesh_bytes(MESH_LIMIT) / 1e6:.0f} MB" == "131 MB"


@pytest.mark.parametrize("radius, scale", [(1e38, 5.0), (1e308, 2.0), (float(np.finfo(np.float64).max), 1.0)])
def test_points_beyond_float32_are_refused_before_anything_is_written(tmp_path, radius, scale):
    """The file holds its points in float32 (3.4e38 at most): ellipsoids reaching beyond it, in float64 too (a
    radius of 1e308) or only once written, are refused naming the radius, and an earlier file stays as it was."""
    path = tmp_path / "e.vtk"
    path.write_bytes(b"earlier")
    means, scales, quats, intensities = _random_gaussians(np.random.default_rng(5), 3)
    scales[:] = 1.0
    scales[1, 2] = scale
    with pytest.raises(ValueError, match="give a smaller radius") as refused:
        save_ellipsoids(path, _gaussians(means, scales, quats, intensities), radius=radius)
    assert f"radius {radius:.6g} times a scale of {scale:.3g}" in str(refused.value)
    assert "the largest float32" in str(refused.value)
    assert path.read_bytes() == b"earlier" and sorted(p.name for p in tmp_path.iterdir()) == ["e.vtk"]


def test_a_huge_radius_within_float32_is_drawn_finite(tmp_path):
    """A radius whose ellipsoids stay within float32's range (up to 2e31 mm here) is drawn, every point finite and
    at that radius of its Gaussian."""
    means, scales, quats, intensities = _random_gaussians(np.random.default_rng(6), 4)
    path = save_ellipsoids(tmp_path / "e.vtk", _gaussians(means, scales, quats, intensities), radius=1e30, level=0)
    points, _, _ = per_gaussian(read_vtk_polydata(path), 4)
    assert np.isfinite(points).all() and np.abs(points).max() > 1e29
    for i in range(4):
        distance = mahalanobis(points[i], means[i].astype(np.float64), covariance(scales[i], quats[i]))
        np.testing.assert_allclose(distance, 1e30, rtol=1e-4)


def test_a_file_is_built_a_part_at_a_time(tmp_path):
    """Writing the level-4 ellipsoids of 600 Gaussians (a 74 MB file) takes a small share of the file's size in
    memory (NumPy's allocations, traced), where building it whole takes three times the file; its points still lie
    at the radius of their own Gaussian and its triangles index their own Gaussian's points across the parts."""
    import tracemalloc

    k = 600
    means, scales, quats, intensities = _random_gaussians(np.random.default_rng(8), k)
    g = _gaussians(means, scales, quats, intensities)
    tracemalloc.start()
    try:
        path = save_ellipsoids(tmp_path / "e.vtk", g, level=4)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    size = path.stat().st_size
    assert size > 70e6 and peak < 0.6 * size, (peak, size)
    points, carried, triangles = per_gaussian(read_vtk_polydata(path), k)
    assert points.shape == (k, 2562, 3) and triangles.shape == (k, 5120, 3)
    for i in (0, 101, 102, 599):  # either side of the first part's end (102 Gaussians of 2,562 points)
        distance = mahalanobis(points[i], means[i].astype(np.float64), covariance(scales[i], quats[i]))
        np.testing.assert_allclose(distance, HALF_MAXIMUM_RADIUS, rtol=2e-4)
        assert (carried[i] == np.float64(intensities[i])).all()


def _free_room(monkeypatch, free: int) -> None:
    """``shutil.disk_usage`` reporting ``free`` bytes free wherever it is asked."""
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda where: shutil._ntuple_diskusage(10 * free + 1, 9 * free + 1, free))


def test_a_file_without_room_is_refused_before_it_is_written(tmp_path, monkeypatch):
    """50 Gaussians at level 6 (40,962 points of 28 bytes and 81,920 triangles of 16 each: 2,457,656 bytes a
    Gaussian, 123 MB) with 50 MB free: refused as a write without room before anything is written, naming both sizes
    and the finest level that fits (level 5: 30.7 MB); with no level that fits, it says to free room. An earlier
    file stays as it was."""
    from medgmae.write_failures import OutputWriteError

    path = tmp_path / "e.vtk"
    path.write_bytes(b"earlier")
    g = _gaussians(*_random_gaussians(np.random.default_rng(9), 50))
    _free_room(monkeypatch, 50_000_000)
    with pytest.raises(OutputWriteError) as refused:
        save_ellipsoids(path, g, level=6)
    said = refused.value.said
    assert said.startswith(f"{path} could not be written (no room: the ellipsoids of 50 Gaussians at level 6 take "
                           f"{50 * 2_457_656 / 1e6:.0f} MB, and {tmp_path} has 50.0 MB free): give a lower level "
                           f"(level 5: {50 * (28 * 10242 + 16 * 20480) / 1e6:.1f} MB)"), said  # fmt: skip
    assert 40962 * 28 + 81920 * 16 == 2_457_656 and "take 123 MB" in said and "level 5: 30.7 MB" in said
    _free_room(monkeypatch, 20_000)
    with pytest.raises(OutputWriteError, match="has 20.0 kB free\\): free room there, or write it to another file system"):
        save_ellipsoids(path, g, level=1)
    assert path.read_bytes() == b"earlier" and sorted(p.name for p in tmp_path.iterdir()) == ["e.vtk"]


def test_a_mesh_larger_than_the_memory_is_refused(monkeypatch):
    """``ellipsoid_mesh`` builds the whole mesh in memory (52 bytes a point: float64 position and normal, float32
    intensity; 24 a triangle: 3 int64 indices): on a machine of 1 MiB (the system's page count made small) the 16
    Gaussians at level 3 (642 points and 1,280 triangles each: 64,104 bytes a Gaussian, 1,025,664 in all) are built,
    30 (1,923,120 bytes: 1.83 MiB) are refused naming both sizes in binary units, as memory is counted, and
    save_ellipsoids."""
    import os

    from medgmae.ellipsoids import ellipsoid_mesh

    real = os.sysconf
    monkeypatch.setattr(os, "sysconf", lambda name: {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 256}.get(name) or real(name))
    rng = np.random.default_rng(10)
    assert 642 * (3 * 8 + 3 * 8 + 4) + 1280 * 3 * 8 == 64_104 and 16 * 64_104 <= 2**20 < 30 * 64_104
    built = ellipsoid_mesh(_gaussians(*_random_gaussians(rng, 16)), level=3)
    assert built.points.shape == built.normals.shape == (16 * 642, 3)
    with pytest.raises(ValueError, match=r"^the mesh of 30 Gaussians at level 3 takes 1\.83 MiB of arrays, more than "
                       r"the 1\.00 MiB of memory this process may use .*: give a lower level, or write it with "
                       "save_ellipsoids"):  # fmt: skip
        ellipsoid_mesh(_gaussians(*_random_gaussians(rng, 30)), level=3)


def test_the_zero_shot_counts_the_limit_states_follow_from_the_defaults():
    """The counts of a scan's zero-shot Gaussians the comment on ``MESH_LIMIT`` gives, computed here from the
    pre-training bundle's defaults (256 Gaussians a 96^3 window at 1.5 mm), the inference's overlap (0: each axis
    cut into ``ceil(length / window)`` windows) and MedGMAE*'s level multipliers: 3 windows a side up to 432 mm, 4 up
    to 576 mm; each count within the limit."""
    import json
    from pathlib import Path

    from medgmae.ellipsoids import MESH_LIMIT
    from medgmae.networks.medgmae import LEVEL_MULTIPLIERS

    root = Path(__file__).resolve().parents[1]
    train = json.loads((root / "bundles/medgmae_pretrain/configs/train.json").read_text(encoding="utf-8"))
    assert json.loads((root / "bundles/medgmae_pretrain/configs/inference.json").read_text(encoding="utf-8"))["overlap"] == 0
    k, window, spacing = train["num_gaussians"], train["roi_size"], train["pixdim"]
    source = (root / "medgmae/ellipsoids.py").read_text(encoding="utf-8").splitlines()
    end = next(i for i, line in enumerate(source) if line.startswith("MESH_LIMIT ="))
    start = max(i for i in range(end) if not source[i].startswith("#:")) + 1
    comment = " ".join(" ".join(line[2:].split()) for line in source[start:end])
    for side, windows in ((432, 3), (576, 4)):
        assert math.ceil(side / spacing / window) == windows < math.ceil((side + spacing) / spacing / window)
        plain, star = windows**3 * k, windows**3 * k * sum(LEVEL_MULTIPLIERS)
        assert f"{side} mm" in comment and f"{plain:,}" in comment and f"{star:,}" in comment, comment
        assert star < MESH_LIMIT
    assert "3 x 3 x 3 windows" in comment and f"{k * sum(LEVEL_MULTIPLIERS):,} a window" in comment
