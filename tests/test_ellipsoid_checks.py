"""What medgmae.ellipsoids refuses and how it says so (the counts of bad Gaussians, the radius, the points a VTK file
indexes, centres beyond float32), what the in-memory mesh carries, a file written whole or not at all, the room
check where the folder is yet to be made or its room cannot be read, and the sizes and command a skipped mesh
names."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

from medgmae import ellipsoids
from medgmae.ellipsoids import ellipsoid_mesh, mesh_bytes, mesh_command, save_ellipsoids, sphere_level
from medgmae.gaussians import Gaussians3D
from medgmae.write_failures import OutputWriteError


def _gaussians(count: int = 4, seed: int = 0, **given: np.ndarray) -> Gaussians3D:
    """``count`` Gaussians in world mm (centres within 50 mm, scales 0.5-4 mm), any array replaced by ``given``."""
    rng = np.random.default_rng(seed)
    arrays = {"means": rng.uniform(-50, 50, (count, 3)), "scales": rng.uniform(0.5, 4, (count, 3)),
              "quats": rng.normal(size=(count, 4)), "intensities": rng.uniform(0, 1, count), **given}  # fmt: skip
    names = ("means", "scales", "quats", "intensities")
    return Gaussians3D(*(torch.tensor(np.asarray(arrays[n]), dtype=torch.float32)[None] for n in names))


def _same_gaussians(count: int) -> Gaussians3D:
    """``count`` unit spheres at the origin."""
    return Gaussians3D(torch.zeros(1, count, 3), torch.ones(1, count, 3), torch.tensor([1.0, 0, 0, 0]).repeat(1, count, 1),
                       torch.ones(1, count))  # fmt: skip


def _room(monkeypatch, free: int, missing_raises: bool = False, error: OSError | None = None) -> None:
    """``shutil.disk_usage`` reporting ``free`` bytes; for a folder that does not exist it raises as the real call
    does where ``missing_raises``; ``error`` raised for every folder."""

    def usage(where):
        if error is not None:
            raise error
        if missing_raises:
            os.stat(where)
        return shutil._ntuple_diskusage(10 * free + 1, 9 * free + 1, free)

    monkeypatch.setattr(shutil, "disk_usage", usage)


def test_a_negative_count_has_no_level():
    with pytest.raises(ValueError, match="^count must be 0 or more, got -1$"):
        sphere_level(-1)


def test_an_empty_batch_is_refused_as_a_batch():
    """A batch of no sets of Gaussians is not one set: refused naming its size, not failing on an index."""
    empty = Gaussians3D(torch.zeros(0, 3, 3), torch.ones(0, 3, 3), torch.ones(0, 3, 4), torch.zeros(0, 3))
    with pytest.raises(ValueError, match="one set of Gaussians is written: got batch size 0"):
        ellipsoid_mesh(empty)


def test_a_gaussian_with_one_bad_coordinate_or_axis_is_counted_once():
    """One Gaussian of four with one NaN coordinate is 1 of 4 that hold NaN; one with one zero axis is 1 with a
    scale of 0 or less."""
    means = np.random.default_rng(0).uniform(-5, 5, (4, 3))
    means[2, 0] = np.nan
    with pytest.raises(ValueError, match="^means must be finite to be drawn: 1 of 4 Gaussians hold NaN or Inf$"):
        ellipsoid_mesh(_gaussians(means=means))
    scales = np.ones((4, 3))
    scales[2, 1] = 0.0
    with pytest.raises(ValueError, match="^scales must be positive to be drawn: 1 Gaussians have a scale of 0 or less$"):
        ellipsoid_mesh(_gaussians(scales=scales))


def test_a_quaternion_too_short_to_normalise_is_refused():
    """A quaternion of length 1e-13, below the 1e-12 the rotation's normalisation divides by at least (it would
    shrink the ellipsoid instead of turning it), is refused as a zero quaternion."""
    quats = np.tile([1.0, 0.0, 0.0, 0.0], (4, 1))
    quats[1] = [0.0, 1e-13, 0.0, 0.0]
    with pytest.raises(ValueError, match="quats must be non-zero"):
        ellipsoid_mesh(_gaussians(quats=quats))


def test_an_infinite_radius_is_refused_as_a_radius():
    with pytest.raises(ValueError, match="^radius must be a positive finite Mahalanobis distance, got inf$"):
        ellipsoid_mesh(_gaussians(), radius=float("inf"))


def test_more_points_than_a_vtk_file_indexes_are_refused():
    """52,427 Gaussians at level 6 (40,962 points each) are 2,147,514,774 points, past the 2^31 - 1 a legacy VTK
    file's 32-bit indices reach: refused by that, before any memory or room is counted."""
    count = 2**31 // 40962 + 1
    assert count * 40962 == 2_147_514_774
    with pytest.raises(ValueError, match=r"^52427 Gaussians of 40962 points are more points than a legacy VTK file "
                       r"indexes \(2147483647\); give a lower level$"):  # fmt: skip
        ellipsoid_mesh(_same_gaussians(count), level=6)


def test_a_centre_near_the_largest_float32_counts_in_the_reach(tmp_path):
    """A centre 3.3e38 out with axes of 3 x 1e37 reaches 3.6e38, past float32's 3.4e38: refused before anything
    is written, though the axes alone are within it."""
    means = np.zeros((2, 3))
    means[1, 0] = 3.3e38
    with pytest.raises(ValueError, match="give a smaller radius"):
        save_ellipsoids(tmp_path / "e.vtk", _gaussians(2, means=means, scales=np.full((2, 3), 1e37)), radius=3.0)
    assert not list(tmp_path.iterdir())


def test_the_in_memory_mesh_carries_each_gaussians_intensity_the_level_and_the_radius():
    """At level 0 (12 points a Gaussian) the intensities are float32, the first Gaussian's on its 12 points, then
    the second's...; the level and radius are those asked for, the level by count (2 for three) when not."""
    mesh = ellipsoid_mesh(_gaussians(3, intensities=np.array([0.1, 0.2, 0.3])), radius=2.0, level=0)
    assert mesh.intensities.dtype == np.float32
    expected = np.array([0.1] * 12 + [0.2] * 12 + [0.3] * 12, dtype=np.float32)
    np.testing.assert_array_equal(mesh.intensities, expected)
    assert mesh.level == 0 and mesh.radius == 2.0
    default = ellipsoid_mesh(_gaussians(3))
    assert default.level == 2 and default.radius == pytest.approx(np.sqrt(2 * np.log(2)))


def test_a_write_that_fails_midway_keeps_the_earlier_file(tmp_path, monkeypatch):
    """A failure after the points were written leaves the earlier file as it was and nothing else."""
    path = tmp_path / "e.vtk"
    path.write_bytes(b"earlier")

    def fail(*args):
        raise RuntimeError("failed midway")

    monkeypatch.setattr(ellipsoids, "_faces", fail)
    with pytest.raises(RuntimeError, match="failed midway"):
        save_ellipsoids(path, _gaussians())
    assert path.read_bytes() == b"earlier" and [p.name for p in tmp_path.iterdir()] == ["e.vtk"]


def test_level_0_is_offered_when_it_alone_fits(tmp_path, monkeypatch):
    """50 Gaussians with 40,000 bytes free: a point takes 28 bytes (position, intensity, normal), a triangle 16; level
    2 takes 50 x (162 x 28 + 320 x 16) = 482,800 bytes, level 1 50 x (42 x 28 + 80 x 16) = 122,800, level 0
    50 x (12 x 28 + 20 x 16) = 32,800, the one level offered."""
    _room(monkeypatch, 40_000)
    with pytest.raises(OutputWriteError) as refused:
        save_ellipsoids(tmp_path / "e.vtk", _gaussians(50), level=2)
    assert "take 483 kB, and" in refused.value.said and "give a lower level (level 0: 32.8 kB)" in refused.value.said


def test_a_folder_not_made_yet_is_checked_on_the_folder_above(tmp_path, monkeypatch):
    """The room of a file in folders still to be made is that of the nearest folder that exists: too little is
    refused there, and no folder is made."""
    _room(monkeypatch, 1000, missing_raises=True)
    with pytest.raises(OutputWriteError) as refused:
        save_ellipsoids(tmp_path / "new" / "deeper" / "e.vtk", _gaussians(5), level=2)
    assert f"and {tmp_path} has 1.00 kB free" in refused.value.said and not (tmp_path / "new").exists()


def test_room_that_cannot_be_read_is_not_checked(tmp_path, monkeypatch):
    """A file system whose free room cannot be read (permission refused) is written to as if it had room."""
    _room(monkeypatch, 0, error=PermissionError(13, "Permission denied"))
    path = save_ellipsoids(tmp_path / "e.vtk", _gaussians(2), level=0)
    assert path.stat().st_size > mesh_bytes(2, 0) == 2 * (12 * 28 + 20 * 16)


def test_mesh_bytes_takes_the_level_by_count():
    """28 bytes a point (position, intensity, normal), 16 a triangle: 10 Gaussians at level 2 (162 points, 320
    triangles), 10,000 at level 1 (42, 80: level 2 would be 3.2 million triangles), 30,000 at level 0 (12, 20)."""
    assert mesh_bytes(10) == 10 * (162 * 28 + 320 * 16)
    assert mesh_bytes(10_000) == 10_000 * (42 * 28 + 80 * 16)
    assert mesh_bytes(30_000) == 30_000 * (12 * 28 + 20 * 16)


def test_the_command_names_absolute_paths_quoted(tmp_path, monkeypatch):
    """Relative paths are given from the folder the run was in, a path with a space in single quotes."""
    (tmp_path / "my scans").mkdir()
    monkeypatch.chdir(tmp_path / "my scans")
    assert mesh_command("g.ply", "sub/e.vtk") == (f"medgmae-ellipsoids '{tmp_path}/my scans/g.ply' "
                                                  f"--out '{tmp_path}/my scans/sub/e.vtk'")  # fmt: skip
