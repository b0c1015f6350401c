"""``medgmae-ellipsoids``: a toolkit ``.ply`` drawn as the ellipsoid mesh 3D Slicer loads, where its file goes by
default, a voxel-frame file mapped by its header's affine, and the refusals (one line naming the file, status 2,
nothing written)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from medgmae.ellipsoids_cli import main
from medgmae.gaussians import Gaussians3D
from medgmae.ply import load_ply, save_ply

from ellipsoid_helpers import (angles_degrees, covariance, ellipsoid_normals, mahalanobis, per_gaussian,
                               read_vtk_polydata, signed_volume)  # fmt: skip

HALF_MAXIMUM = float(np.sqrt(2.0 * np.log(2.0)))


def _gaussians(count: int = 7, seed: int = 0) -> Gaussians3D:
    rng = np.random.default_rng(seed)
    arrays = (rng.uniform(-30, 30, (count, 3)), rng.uniform(0.5, 4.0, (count, 3)), rng.normal(size=(count, 4)),
              rng.uniform(0.05, 0.95, count))  # fmt: skip
    return Gaussians3D(*(torch.tensor(a, dtype=torch.float32)[None] for a in arrays))


def _refused(capsys, argv: list[str], *words: str) -> str:
    """``main(argv)`` returns 2 with one error line holding ``words`` (no traceback); returns that line."""
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert captured.out == "" and err.startswith("medgmae-ellipsoids: error: ") and "\n" not in err, err
    assert all(w in err for w in words), (words, err)
    return err


def test_help_names_the_command_its_input_and_options(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    text = capsys.readouterr().out
    assert done.value.code == 0 and text.startswith("usage: medgmae-ellipsoids ")
    assert all(w in text for w in ("GAUSSIANS.ply", "--out FILE.vtk", "--radius R", "--level L", "--force", "world"))


@pytest.mark.parametrize("name, written", [("gaussians.ply", "ellipsoids.vtk"), ("ct_gaussians.ply", "ct_ellipsoids.vtk"),
                                           ("scene.ply", "scene_ellipsoids.vtk")])  # fmt: skip
def test_a_world_file_is_drawn_as_it_is_beside_the_input(tmp_path, capsys, name, written):
    """A world-frame file's mesh: ``save_ellipsoids`` of the Gaussians it holds, byte for byte, under the runs' names
    (``gaussians.ply`` -> ``ellipsoids.vtk``, ``<name>_gaussians.ply`` -> ``<name>_ellipsoids.vtk``), else
    ``<stem>_ellipsoids.vtk``; its vertices at the half maximum of the .ply's Gaussians (SciPy's covariances)."""
    from medgmae.ellipsoids import save_ellipsoids

    g = _gaussians()
    ply = save_ply(tmp_path / name, g, frame="world", shape=(9, 9, 9), affine=np.diag([2.0, 2.0, 3.0, 1.0]))
    assert main([str(ply)]) == 0
    out = tmp_path / written
    assert capsys.readouterr().out.startswith(f"wrote {out}: 7 Gaussians (world frame) as ellipsoids of 162 points")
    assert out.read_bytes() == save_ellipsoids(tmp_path / "expected.vtk", load_ply(ply)[0]).read_bytes()
    points, _, _ = per_gaussian(read_vtk_polydata(out), 7)
    means, scales, quats, _ = (t[0].double().numpy() for t in g.tensors())
    for i in range(7):
        np.testing.assert_allclose(mahalanobis(points[i], means[i], covariance(scales[i], quats[i])), HALF_MAXIMUM, rtol=1e-4)


def test_radius_and_level_are_those_asked_for(tmp_path):
    g = _gaussians(3)
    ply = save_ply(tmp_path / "g.ply", g, frame="world")
    assert main([str(ply), "--out", str(tmp_path / "a.vtk"), "--radius", "2", "--level", "1"]) == 0
    points, _, triangles = per_gaussian(read_vtk_polydata(tmp_path / "a.vtk"), 3)
    assert points.shape == (3, 42, 3) and triangles.shape == (3, 80, 3)
    means, scales, quats, _ = (t[0].double().numpy() for t in g.tensors())
    np.testing.assert_allclose(mahalanobis(points[2], means[2], covariance(scales[2], quats[2])), 2.0, rtol=1e-4)


def test_a_voxel_file_is_mapped_by_its_headers_affine(tmp_path, capsys):
    """A voxel-frame file with the voxel-to-world affine in its header (oblique, anisotropic, mirrored: determinant
    below 0): each ellipsoid centred on ``A x + t`` of its voxel centre, every vertex at the half maximum under
    ``M Sigma M^T`` (built here with SciPy), each ellipsoid's triangles still turning outward and each vertex's
    normal that ellipsoid's outward unit normal, ``(M Sigma M^T)^-1 (x - centre)`` normalised."""
    from scipy.spatial.transform import Rotation

    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", [25.0, -10.0, 40.0], degrees=True).as_matrix() @ np.diag([-0.8, 1.2, 2.5])
    affine[:3, 3] = [12.0, -40.0, 7.0]
    g = _gaussians(5, seed=3)
    ply = save_ply(tmp_path / "v.ply", g, frame="voxel", shape=(20, 20, 20), affine=affine)
    assert main([str(ply)]) == 0
    assert "(voxel frame mapped to world mm by the header's affine)" in capsys.readouterr().out
    mesh = read_vtk_polydata(tmp_path / "v_ellipsoids.vtk")
    points, _, triangles = per_gaussian(mesh, 5)
    normals = mesh["normals"]["normals"].reshape(5, -1, 3)
    means, scales, quats, _ = (t[0].double().numpy() for t in g.tensors())
    m, t = affine[:3, :3], affine[:3, 3]
    for i in range(5):
        centre, cov = m @ means[i] + t, m @ covariance(scales[i], quats[i]) @ m.T
        np.testing.assert_allclose(points[i].mean(0), centre, atol=1e-3)
        np.testing.assert_allclose(mahalanobis(points[i], centre, cov), HALF_MAXIMUM, rtol=1e-3)
        assert signed_volume(points[i] - centre, triangles[i]) > 0
        assert (np.einsum("vi,vi->v", normals[i], points[i] - centre) > 0).all()
        assert angles_degrees(normals[i], ellipsoid_normals(points[i], centre, cov)).max() < 0.02


def test_frames_3d_slicer_cannot_place_are_refused(tmp_path, capsys):
    g = _gaussians(2)
    voxel = save_ply(tmp_path / "voxel.ply", g, frame="voxel")
    _refused(capsys, [str(voxel)], str(voxel), "voxel coordinates", "no voxel-to-world affine", "world millimetres")
    normalised = save_ply(tmp_path / "n.ply", g, frame="normalized", shape=(8, 8, 8), affine=np.eye(4))
    _refused(capsys, [str(normalised)], str(normalised), "frame 'normalized'", "world millimetres")
    bad = np.eye(4)
    bad[3] = [0.0, 0.0, 1.0, 1.0]
    projective = save_ply(tmp_path / "p.ply", g, frame="voxel", affine=bad)
    _refused(capsys, [str(projective)], str(projective), "not a finite voxel-to-world affine")
    singular = save_ply(tmp_path / "s.ply", g, frame="voxel", affine=np.diag([1.0, 0.0, 1.0, 1.0]))
    _refused(capsys, [str(singular)], str(singular), "cannot map its voxel coordinates")
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".ply"] * 4  # nothing written


def test_inputs_that_are_no_ply_of_gaussians_are_refused(tmp_path, capsys):
    _refused(capsys, [str(tmp_path / "none.ply")], f"{tmp_path / 'none.ply'}: no such file")
    _refused(capsys, [str(tmp_path)], f"{tmp_path} is a folder")
    (tmp_path / "text.ply").write_text("not a ply")
    _refused(capsys, [str(tmp_path / "text.ply")], str(tmp_path / "text.ply"), "not a PLY file")
    (tmp_path / "cut.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement\nend_header\n")
    _refused(capsys, [str(tmp_path / "cut.ply")], str(tmp_path / "cut.ply"), "not a PLY file")
    short = save_ply(tmp_path / "short.ply", _gaussians(4), frame="world")
    short.write_bytes(short.read_bytes()[:-10])
    _refused(capsys, [str(short)], str(short), "truncated")
    flat = save_ply(tmp_path / "flat.ply", _gaussians(4), frame="world")
    raw = bytearray(flat.read_bytes())
    start = raw.index(b"end_header\n") + len(b"end_header\n")
    record = np.frombuffer(raw, np.dtype([(n, "<f4") for n in _ply_fields(raw)]), 4, start).copy()
    record["sigma_0"][1] = 0.0  # a Gaussian flat along one axis: no ellipsoid to draw
    raw[start:] = record.tobytes()
    flat.write_bytes(bytes(raw))
    _refused(capsys, [str(flat)], str(flat), "scales must be positive")
    assert not list(tmp_path.glob("*.vtk"))


def _ply_fields(raw: bytes) -> list[str]:
    """The vertex property names of a PLY header."""
    header = raw[: raw.index(b"end_header")].decode("ascii")
    return [line.split()[-1] for line in header.splitlines() if line.startswith("property")]


def test_outputs_it_cannot_or_should_not_write_are_refused(tmp_path, capsys):
    ply = save_ply(tmp_path / "gaussians.ply", _gaussians(3), frame="world")
    _refused(capsys, [str(ply), "--out", str(tmp_path / "mesh.ply")], "--out", "mesh.ply", ".vtk")
    (tmp_path / "folder.vtk").mkdir()
    _refused(capsys, [str(ply), "--out", str(tmp_path / "folder.vtk")], str(tmp_path / "folder.vtk"), "is a folder")
    (tmp_path / "file").write_text("")
    _refused(capsys, [str(ply), "--out", str(tmp_path / "file" / "m.vtk")], f"{tmp_path / 'file'} is a file")
    old = tmp_path / "ellipsoids.vtk"
    old.write_bytes(b"kept")
    _refused(capsys, [str(ply)], f"{old} exists", "--force")
    assert old.read_bytes() == b"kept"
    assert main([str(ply), "--force"]) == 0 and read_vtk_polydata(old)["points"].shape == (3 * 162, 3)
    ply_named_vtk = save_ply(tmp_path / "g.vtk", _gaussians(3), frame="world")
    _refused(capsys, [str(ply_named_vtk), "--out", str(ply_named_vtk), "--force"], "is the input itself")
    assert load_ply(ply_named_vtk)[0].num_gaussians == 3


@pytest.mark.parametrize("flags, words", [(["--radius", "0"], "--radius: expected a positive number"),
                                          (["--radius", "nan"], "--radius: expected a positive number"),
                                          (["--level", "7"], "--level: expected a whole number from 0 to 6"),
                                          (["--level", "-1"], "--level: expected a whole number from 0 to 6"),
                                          (["--level", "1.5"], "--level: expected a whole number from 0 to 6")])  # fmt: skip
def test_bad_radius_or_level_is_a_usage_error(tmp_path, capsys, flags, words):
    with pytest.raises(SystemExit) as done:
        main([str(tmp_path / "g.ply"), *flags])
    assert done.value.code == 2 and words in capsys.readouterr().err


def test_a_radius_beyond_float32_is_refused_in_one_line(tmp_path, capsys):
    """``--radius 1e308`` (float64 overflows; 1e38 overflows the file's float32 only): one line naming the .ply
    and what to do, status 2, nothing written."""
    ply = save_ply(tmp_path / "g.ply", _gaussians(3), frame="world")
    for radius in ("1e308", "1e38"):
        _refused(capsys, [str(ply), "--radius", radius], str(ply), f"radius {float(radius):.6g} times a scale",
                 "the largest float32", "give a smaller radius")  # fmt: skip
    assert not list(tmp_path.glob("*.vtk"))


def test_a_mesh_without_room_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    """``--level 6`` on 40 Gaussians (98 MB: 40,962 points of 28 bytes, 81,920 triangles of 16 each) where 30 MB are
    free: refused before anything is written, in one line naming both sizes and the finest level that fits (level 5:
    10,242 points and 20,480 triangles each, 24.6 MB)."""
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda where: shutil._ntuple_diskusage(10**9, 10**9 - 30_000_000, 30_000_000))
    ply = save_ply(tmp_path / "g.ply", _gaussians(40), frame="world")
    err = _refused(capsys, [str(ply), "--level", "6"], f"{tmp_path / 'g_ellipsoids.vtk'} could not be written (no room: the "
                   f"ellipsoids of 40 Gaussians at level 6 take {40 * (40962 * 28 + 81920 * 16) / 1e6:.1f} MB",
                   "30.0 MB free",
                   f"give a lower level (level 5: {40 * (10242 * 28 + 20480 * 16) / 1e6:.1f} MB)")  # fmt: skip
    assert err.startswith(f"medgmae-ellipsoids: error: {tmp_path / 'g_ellipsoids.vtk'} could not be written"), err
    assert not list(tmp_path.glob("*.vtk"))


def test_an_upper_case_vtk_ending_is_a_vtk_file(tmp_path):
    ply = save_ply(tmp_path / "g.ply", _gaussians(3), frame="world")
    assert main([str(ply), "--out", str(tmp_path / "mesh.VTK")]) == 0
    assert read_vtk_polydata(tmp_path / "mesh.VTK")["points"].shape == (3 * 162, 3)


@pytest.mark.parametrize("link", [os.link, os.symlink], ids=["hard link", "symbolic link"])
def test_a_link_to_the_input_is_the_input_even_with_force(tmp_path, capsys, link):
    """An --out that is another name of the .ply itself is refused, --force or not, and the .ply is kept."""
    ply = save_ply(tmp_path / "g.vtk", _gaussians(3), frame="world")
    link(ply, tmp_path / "other.vtk")
    _refused(capsys, [str(ply), "--out", str(tmp_path / "other.vtk"), "--force"], "is the input itself")
    assert load_ply(ply)[0].num_gaussians == 3


def test_the_input_spelled_through_a_folder_not_made_yet_is_the_input(tmp_path, capsys):
    """``new/../g.vtk`` names the input though ``new`` does not exist (so it cannot be opened to compare)."""
    ply = save_ply(tmp_path / "g.vtk", _gaussians(3), frame="world")
    _refused(capsys, [str(ply), "--out", str(tmp_path / "new" / ".." / "g.vtk"), "--force"], "is the input itself")
    assert load_ply(ply)[0].num_gaussians == 3 and not (tmp_path / "new").exists()


def test_a_default_output_refused_is_named_as_the_default(tmp_path, capsys, monkeypatch):
    """Where the default output cannot be written, the line calls it the default output and says to give --out;
    a given --out is called --out and not told to give itself. Both before the .ply is read."""
    import medgmae.files

    ply = save_ply(tmp_path / "g.ply", _gaussians(3), frame="world")
    (tmp_path / "g_ellipsoids.vtk").mkdir()
    _refused(capsys, [str(ply)], f"the default output {tmp_path / 'g_ellipsoids.vtk'} is a folder")
    monkeypatch.setattr(medgmae.files, "output_dir_problem", lambda folder: f"{folder} cannot be written")
    (tmp_path / "text.ply").write_text("not a ply")
    for argv, said in (([str(tmp_path / "text.ply")], f"error: the default output {tmp_path / 'text_ellipsoids.vtk'}: "
                        f"{tmp_path} cannot be written; give --out a .vtk file in a folder you can write"),
                       ([str(tmp_path / "text.ply"), "--out", str(tmp_path / "m.vtk")],
                        f"error: --out {tmp_path / 'm.vtk'}: {tmp_path} cannot be written")):  # fmt: skip
        assert _refused(capsys, argv).endswith(said)


def test_the_readers_message_names_the_file_once(tmp_path, capsys):
    """The .ply reader's own message names the file already: it is not named again; one that does not is given it."""
    (tmp_path / "text.ply").write_text("not a ply")
    assert _refused(capsys, [str(tmp_path / "text.ply")]).count(str(tmp_path / "text.ply")) == 1
    (tmp_path / "bad.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex abc\nend_header\n")
    assert _refused(capsys, [str(tmp_path / "bad.ply")]).count(str(tmp_path / "bad.ply")) == 1


def test_a_non_finite_affine_is_named_as_such(tmp_path, capsys):
    affine = np.eye(4)
    affine[0, 0] = np.nan
    ply = save_ply(tmp_path / "v.ply", _gaussians(3), frame="voxel", affine=affine)
    _refused(capsys, [str(ply)], "the header's affine is not a finite voxel-to-world affine")


def test_a_missing_input_is_named_before_a_bad_output(tmp_path, capsys):
    err = _refused(capsys, [str(tmp_path / "none.ply"), "--out", str(tmp_path / "m.ply")], "no such file")
    assert "--out" not in err


def test_the_line_gives_the_points_triangles_and_size_of_the_level_asked(tmp_path, capsys):
    """Level 1: 42 points a Gaussian of 28 bytes each (position, intensity, normal) and 80 triangles of 16 each:
    3 x (42 x 28 + 80 x 16) = 7,368 bytes."""
    ply = save_ply(tmp_path / "g.ply", _gaussians(3), frame="world")
    capsys.readouterr()
    assert main([str(ply), "--level", "1"]) == 0
    said = capsys.readouterr().out.strip()
    assert said.endswith("as ellipsoids of 42 points and 80 triangles at Mahalanobis radius 1.177, 7.37 kB"), said


def test_a_path_from_home_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    save_ply(tmp_path / "g.ply", _gaussians(3), frame="world")
    assert main(["~/g.ply", "--out", "~/m.vtk"]) == 0 and (tmp_path / "m.vtk").is_file()
