"""What zero-shot inference (GaussianInference) writes and says: the rendered NIfTI within the HU window, slices
drawn to scale, outputs of another scan warned about, a single slice or a scan with no Gaussian refused writing
nothing, and the recorded pre-processing stated (the pipeline's contract itself: test_zeroshot.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medgmae.gaussians import Gaussians3D
from medgmae.preprocessing import PreprocessingSpec


def _written_outputs(tmp_path, rendered: np.ndarray, affine: np.ndarray, scan: np.ndarray) -> dict:
    """What inference writes for a given scan and rendering (the model's part replaced by the given arrays)."""
    import nibabel as nib

    from medgmae.mae_training.inference import GaussianInference
    from medgmae.zeroshot import ZeroShotResult

    nib.save(nib.Nifti1Image(scan, affine), str(tmp_path / "case.nii.gz"))
    g = Gaussians3D(torch.full((1, 1, 3), 4.0), torch.ones(1, 1, 3), torch.tensor([[[1.0, 0, 0, 0]]]), torch.ones(1, 1))
    res = ZeroShotResult(g, g, scan.shape, affine, PreprocessingSpec(), np.eye(4)[None])  # window -175..250 HU -> 0..1
    inference = GaussianInference(tmp_path / "model.pt", tmp_path / "case.nii.gz", tmp_path / "out", device="cpu")
    return inference._write(scan, affine, res, rendered, 3.0)


def test_rendered_nifti_stays_within_the_hu_window(tmp_path):
    """Renderings past the model's intensity range (overlapping Gaussians, MedGMAE*'s added levels) are written at
    the window's ends, -175 and 250 HU, not extrapolated; values inside map linearly."""
    import nibabel as nib

    rendered = np.full((6, 6, 6), 3.57, np.float32)  # 3.57 would be -175 + 3.57 * 425 = 1342 HU
    rendered[:, :, 3:] = -0.5
    rendered[0, 0, 0] = 0.3
    paths = _written_outputs(tmp_path, rendered, np.eye(4), np.zeros((6, 6, 6), np.float32))
    hu = nib.load(str(paths["nifti"])).get_fdata()
    assert hu[1, 1, 1] == pytest.approx(250.0) and hu[1, 1, 4] == pytest.approx(-175.0)
    assert hu[0, 0, 0] == pytest.approx(-47.5, abs=1e-3) and hu.max() <= 250.0 + 1e-4 and hu.min() >= -175.0 - 1e-4


def test_outputs_of_another_scan_of_the_same_name_are_warned_about(tmp_path, caplog):
    """``ct.nii.gz`` then ``ct.nrrd`` (or two folders' ``ct.nii.gz``) wrote the same ``ct_*`` files, the second
    replacing the first without a word: a warning when the existing rendering has another grid; none on a rerun."""
    scan = np.zeros((6, 6, 6), np.float32)
    with caplog.at_level("WARNING"):
        _written_outputs(tmp_path, scan, np.eye(4), scan)
        _written_outputs(tmp_path, scan, np.eye(4), scan)  # the same scan again
    assert "another scan" not in caplog.text
    with caplog.at_level("WARNING"):
        _written_outputs(tmp_path, scan, np.diag([1.0, 1.0, 2.5, 1.0]), scan)
    assert f"{tmp_path / 'out' / 'case_*'} held the outputs of another scan (another grid)" in caplog.text


def test_a_single_slice_is_refused_before_the_model_is_read(tmp_path):
    """A (X, Y, 1) slice gave 0 Gaussians, a constant rendering and exit 0 (training's pre-check refuses it)."""
    import nibabel as nib

    from medgmae.mae_training.inference import GaussianInference

    nib.save(nib.Nifti1Image(np.zeros((20, 20, 1), np.float32), np.eye(4)), str(tmp_path / "slice.nii.gz"))
    inference = GaussianInference(tmp_path / "missing_model.pt", tmp_path / "slice.nii.gz", tmp_path / "out", device="cpu")
    with pytest.raises(ValueError, match=r"slice.nii.gz: a single slice or line \(shape \(20, 20, 1\)\)"):
        inference.run()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("direction", [(1, 1, 1), (-1, -1, 1)])
def test_slices_png_is_drawn_to_scale(tmp_path, direction):
    """A 20 mm cube in voxels of 1 x 1 x 2.5 mm (RAS or LPS order) is a square in the three views of the input."""
    from PIL import Image
    from scipy import ndimage

    affine = np.diag([*(np.array(direction) * [1.0, 1.0, 2.5]), 1.0])
    scan = np.full((40, 40, 16), -1000.0, np.float32)
    scan[10:30, 10:30, 4:12] = 100.0  # 20 x 20 voxels of 1 mm, 8 slices of 2.5 mm
    paths = _written_outputs(tmp_path, np.zeros(scan.shape, np.float32), affine, scan)
    img = np.asarray(Image.open(paths["png"]).convert("L"))
    grey = round(255 * (100.0 + 175.0) / 425.0)  # the cube's windowed grey
    labels, _ = ndimage.label(img == grey)
    boxes = [(r.stop - r.start, c.stop - c.start) for r, c in ndimage.find_objects(labels)]
    cubes = [(h, w) for h, w in boxes if h * w > 100]  # not the specks of the labels' lettering
    assert len(cubes) == 3, boxes  # sagittal, coronal and axial of the input row
    for height, width in cubes:
        assert height > 60 and abs(height / width - 1) < 0.05, (height, width)  # enlarged, and square


def _tiny_model_file(path, spec: PreprocessingSpec | None) -> str:
    from medgmae.networks import MedGMAE

    torch.manual_seed(0)
    m = MedGMAE(img_size=16, patch_size=8, model_size="tiny", num_gaussians=8, render_backend="torch")
    m.preprocessing = spec
    torch.save(m.model_checkpoint(), path)
    return str(path)


def test_a_scan_with_no_gaussian_is_refused_naming_the_cause_and_writing_nothing(tmp_path, monkeypatch):
    """A scan far smaller than the model's window (4 x 4 x 2 voxels at 2 mm in a 16^3 window) gave an empty
    ``.ply``, a constant rendering and exit 0: refused, naming the scan, its size on the model's grid and the
    window (the decoder stubbed to place its Gaussians at the window's far corner, in the padding)."""
    import nibabel as nib

    from medgmae.mae_training import inference

    def in_the_padding(windows, affines):
        b = windows.shape[0]
        return Gaussians3D(torch.full((b, 2, 3), 0.9), torch.full((b, 2, 3), 0.05), torch.tensor([1.0, 0, 0, 0]).expand(b, 2, 4),
                           torch.ones(b, 2))  # fmt: skip

    zero_shot = inference.zero_shot_gaussians
    monkeypatch.setattr(inference, "zero_shot_gaussians", lambda *a, **kw: zero_shot(*a, decode=in_the_padding, **kw))
    spec = PreprocessingSpec(spacing=2.0, input_size=16, patch_size=8)
    model = _tiny_model_file(tmp_path / "model.pt", spec)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), str(tmp_path / "small.nii.gz"))
    run = inference.GaussianInference(model, tmp_path / "small.nii.gz", tmp_path / "out", device="cpu")
    with pytest.raises(ValueError) as e:
        run.run()
    assert f"{tmp_path / 'small.nii.gz'}: the decoder placed no Gaussian in the scan, nothing was written" in str(e.value)
    assert "the scan is 4x4x2 voxels at the model's 2x2x2 mm, smaller than its 16x16x16 window" in str(e.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("recorded", [True, False])
def test_the_recorded_pre_processing_is_stated(tmp_path, caplog, recorded):
    """Zero-shot inference said nothing of the orientation, spacing and HU window it read from ``model.pt``
    (fine-tuning states them): one line naming the file and the recorded values; a model recording none is
    warned about with the default instead."""
    import logging

    import nibabel as nib

    from medgmae.mae_training import inference

    spec = PreprocessingSpec(orientation="LPS", spacing=(2.0, 2.0, 3.0), hu_window=(-500, 500), input_size=16, patch_size=8)
    model = _tiny_model_file(tmp_path / "model.pt", spec if recorded else None)
    scan = np.full((20, 20, 12), -1000.0, np.float32)
    scan[5:15, 5:15, 3:9] = 40.0
    nib.save(nib.Nifti1Image(scan, np.diag([1.5, 1.5, 2.5, 1.0])), str(tmp_path / "ct.nii.gz"))
    with caplog.at_level(logging.INFO, logger="medgmae"):
        try:
            inference.GaussianInference(model, tmp_path / "ct.nii.gz", tmp_path / "out", device="cpu").run()
        except ValueError as e:  # an untrained decoder may place nothing in the scan: the statement came first
            assert "placed no Gaussian" in str(e)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("pre-processing:")]
    if recorded:
        where = f"recorded in {(tmp_path / 'model.pt').resolve()}"
        assert said == [f"pre-processing: orientation LPS ({where}), spacing [2.0, 2.0, 3.0] mm ({where}), HU window "
                        f"[-500.0, 500.0] ({where}), window 16x16x16"]  # fmt: skip
    else:  # warned about, and the default stated as fine-tuning and --init medgmae state it
        assert "records no pre-processing" in caplog.text
        assert said == ["pre-processing: orientation RAS (default), spacing [1.5, 1.5, 1.5] mm (default), HU window "
                        "[-175.0, 250.0] (default), window 16x16x16"]  # fmt: skip


@pytest.mark.parametrize("name, said", [
    ("corrupt.nii.gz", "cannot read the volume ("),
    ("photo.png", "not a volume file"),
])  # fmt: skip
def test_a_scan_that_cannot_be_read_is_refused_alone(tmp_path, name, said):
    """A corrupt or non-volume ``--image`` is a refusal of the user's file, as training's pre-check and fine-tuning's
    segmentation refuse theirs: the run ends with ``error: DatasetError: <file>: ...`` alone, without the 80 lines of
    MONAI's traceback above it that a ValueError keeps."""
    import subprocess
    import sys

    import nibabel as nib

    from pretrain_helpers import CONFIGS, REPO, bundle_env

    model = _tiny_model_file(tmp_path / "model.pt", PreprocessingSpec(spacing=2.0, input_size=16, patch_size=8))
    scan = tmp_path / name
    if name.endswith(".gz"):  # a download cut short: half of a NIfTI file
        nib.save(nib.Nifti1Image(np.random.default_rng(0).random((20, 20, 20), np.float32), np.eye(4)), str(scan))
        scan.write_bytes(scan.read_bytes()[: scan.stat().st_size // 2])
    else:
        scan.write_bytes(b"\x89PNG\r\n\x1a\n")
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "inferring", "--config_file",
                           str(CONFIGS / "inference.json"), "--model_path", model, "--image", str(scan),
                           "--inference_dir", str(tmp_path / "out"), "--device", "cpu"], cwd=REPO, env=bundle_env(1),
                          capture_output=True, encoding="utf-8", errors="replace", timeout=300)  # fmt: skip
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode == 1 and not any(line.startswith("Traceback") for line in lines), lines[-20:]
    assert lines[-1].startswith(f"error: DatasetError: {scan}: ") and said in lines[-1], lines[-1]
    assert not (tmp_path / "out").exists()


def _oblique_anisotropic_affine() -> np.ndarray:
    """Voxel axes (I, J, K) along about (-S, R, -A), of 2.5, 0.8 and 1.1 mm, turned 10 degrees about the I axis."""
    c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
    axes = np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float).T @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = axes * [2.5, 0.8, 1.1], [12.0, -30.0, 7.0]
    return affine


@pytest.mark.parametrize("spec", [PreprocessingSpec(), PreprocessingSpec(intensity_range=(-1.0, 1.0), clip=False)])
def test_the_png_is_the_full_volume_computation_of_three_slices(tmp_path, spec):
    """The picture's slices are cut before the window and scaling, not after both were computed on the whole scan:
    the same PNG, byte for byte, as the full-volume computation (written out here) on an int16 scan of an
    anisotropic, permuted, flipped and oblique grid."""
    import nibabel as nib

    from medgmae.engine.figures import mid_slices, orthogonal_views, save_png, voxel_sizes
    from medgmae.mae_training.inference import GaussianInference, picture_views
    from medgmae.zeroshot import ZeroShotResult

    rng, affine = np.random.default_rng(3), _oblique_anisotropic_affine()
    scan = rng.integers(-1100, 1500, (11, 14, 9)).astype(np.int16)
    rendered = rng.uniform(-1.3, 1.4, scan.shape).astype(np.float32)
    (b0, b1), ornt = spec.intensity_range, nib.orientations.io_orientation(affine)
    reference = [nib.orientations.apply_orientation(v, ornt) for v in
                 ((spec.window(scan) - b0) / (b1 - b0), np.clip((rendered - b0) / (b1 - b0), 0, 1))]  # fmt: skip
    spacing = (0.8, 1.1, 2.5)  # R-L, A-P, I-S: the J, K and I voxel sizes
    views, got_spacing = picture_views(scan, rendered, affine, spec)
    np.testing.assert_allclose(got_spacing, spacing)
    assert reference[0].shape == (14, 9, 11)
    for got, volume in zip(views, reference):
        want = [np.fliplr(np.rot90(s)) for s in (volume[7], volume[:, 4], volume[:, :, 5])]  # the middle slices
        assert all(g.dtype == w.dtype and np.array_equal(g, w) for g, w in zip(got, want))

    nib.save(nib.Nifti1Image(scan, affine), str(tmp_path / "case.nii.gz"))
    g = Gaussians3D(torch.full((1, 1, 3), 4.0), torch.ones(1, 1, 3), torch.tensor([[[1.0, 0, 0, 0]]]), torch.ones(1, 1))
    res = ZeroShotResult(g, g, scan.shape, affine, spec, np.eye(4)[None])
    png = GaussianInference(tmp_path / "model.pt", tmp_path / "case.nii.gz", tmp_path / "out", device="cpu")._write(
        scan, affine, res, rendered, 3.0)["png"]  # fmt: skip
    title = f"case: voxels {voxel_sizes(got_spacing)}; grey window [-175, 250] HU"
    old = save_png(orthogonal_views([mid_slices(v) for v in reference], got_spacing, ("input", "rendering"), title),
                   tmp_path / "old.png")  # fmt: skip
    assert png.read_bytes() == old.read_bytes()


def test_the_picture_of_a_large_scan_costs_its_slices_not_copies_of_it():
    """A 160 x 160 x 128 int16 scan (6.5 MB) and its float32 rendering: cutting the picture's slices allocates far
    less than the scan (the full-volume window alone was a 26 MB float64 copy)."""
    import tracemalloc

    from medgmae.mae_training.inference import picture_views

    scan = np.asfortranarray(np.full((160, 160, 128), -1000, np.int16))
    rendered = np.asfortranarray(np.zeros(scan.shape, np.float32))
    tracemalloc.start()
    try:
        picture_views(scan, rendered, _oblique_anisotropic_affine(), PreprocessingSpec())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < scan.nbytes / 4, peak  # a few float64 slices and their temporaries


def test_the_ellipsoids_draw_the_ply_gaussians_in_the_same_world_frame(tmp_path, monkeypatch):
    """``<name>_ellipsoids.vtk`` beside ``<name>_gaussians.ply``, through inference of a scan on an oblique,
    anisotropic, permuted grid (the decoder stubbed to place anisotropic, rotated Gaussians): ellipsoid ``i`` is
    the .ply's Gaussian ``i`` in world mm, centred on it (within 1e-3 mm), every vertex at the half-maximum
    Mahalanobis distance under the .ply's covariance (built with SciPy), carrying its intensity, marked RAS for Slicer;
    and the centres fall in the scan's voxel grid (within half a voxel of the model's 2 mm grid, which the decoder saw:
    the file's frame is the scan's world, not mirrored or in voxels)."""
    import nibabel as nib

    from ellipsoid_helpers import covariance, mahalanobis, per_gaussian, read_vtk_polydata
    from medgmae.mae_training import inference
    from medgmae.ply import load_ply

    rng = np.random.default_rng(5)
    placed = (torch.tensor(rng.uniform(0.05, 0.95, (40, 3)), dtype=torch.float32),
              torch.tensor(rng.uniform(0.01, 0.08, (40, 3)), dtype=torch.float32),
              torch.tensor(rng.normal(size=(40, 4)), dtype=torch.float32),
              torch.tensor(rng.uniform(0.1, 0.9, 40), dtype=torch.float32))  # fmt: skip

    def decode(windows, affines):
        return Gaussians3D(*(t.expand(windows.shape[0], *t.shape) for t in placed))

    zero_shot = inference.zero_shot_gaussians
    monkeypatch.setattr(inference, "zero_shot_gaussians", lambda *a, **kw: zero_shot(*a, decode=decode, **kw))
    model = _tiny_model_file(tmp_path / "model.pt", PreprocessingSpec(spacing=2.0, input_size=16, patch_size=8))
    affine, scan = _oblique_anisotropic_affine(), np.full((12, 30, 22), 40.0, np.float32)
    nib.save(nib.Nifti1Image(scan, affine), str(tmp_path / "ct.nii.gz"))
    paths = inference.GaussianInference(model, tmp_path / "ct.nii.gz", tmp_path / "out", device="cpu").run()
    assert paths["mesh"] == tmp_path / "out" / "ct_ellipsoids.vtk" and paths["mesh"].is_file()
    g, meta = load_ply(paths["ply"])
    k = g.num_gaussians
    assert k >= 10 and meta["frame"] == "world"
    mesh = read_vtk_polydata(paths["mesh"])
    assert "SPACE=RAS" in mesh["title"]
    points, carried, _ = per_gaussian(mesh, k)
    means, scales, quats, inten = (t[0].double().numpy() for t in g.tensors())
    for i in range(k):
        np.testing.assert_allclose(points[i].mean(0), means[i], atol=1e-3)
        distance = mahalanobis(points[i], means[i], covariance(scales[i], quats[i]))
        np.testing.assert_allclose(distance, np.sqrt(2 * np.log(2)), rtol=1e-3)
        np.testing.assert_allclose(carried[i], inten[i], rtol=1e-6)
    index = (points.mean(1) - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T  # world -> the scan's voxels
    beyond = (index - np.clip(index, -0.5, np.array(scan.shape) - 0.5)) @ affine[:3, :3].T  # past the grid's faces, mm
    assert np.linalg.norm(beyond, axis=1).max() <= 1.0 + 1e-3  # within half a voxel of the model's 2 mm grid


@pytest.mark.parametrize("limit", [11, 12])  # 12 Gaussians: above the limit (no mesh written), and at it
def test_an_earlier_runs_mesh_is_never_beside_this_runs_files(tmp_path, monkeypatch, limit):
    """An earlier run's ``case_ellipsoids.vtk`` was removed (above the limit) or replaced (within it) after this
    run's rendering, picture and ``.ply`` were written: a stop in between left it beside them, as their mesh. Every
    file replacement of the write is watched: at none of them is the earlier mesh beside one of this run's files."""
    import os

    import nibabel as nib

    from medgmae import ellipsoids
    from medgmae.mae_training.inference import GaussianInference
    from medgmae.zeroshot import ZeroShotResult

    rng = np.random.default_rng(3)
    g = Gaussians3D(*(torch.tensor(a, dtype=torch.float32)[None] for a in (
        rng.uniform(-20, 20, (12, 3)), rng.uniform(0.3, 3.0, (12, 3)), rng.normal(size=(12, 4)), rng.uniform(0.1, 0.9, 12))))  # fmt: skip
    scan, affine = np.zeros((6, 7, 5), np.float32), _oblique_anisotropic_affine()
    nib.save(nib.Nifti1Image(scan, affine), str(tmp_path / "case.nii.gz"))
    res = ZeroShotResult(g, g, scan.shape, affine, PreprocessingSpec(), np.eye(4)[None])
    out = tmp_path / "out"
    out.mkdir()
    names = ["case_rendered.nii.gz", "case_slices.png", "case_gaussians.ply", "case_ellipsoids.vtk"]
    earlier = {name: f"the earlier run's {name}".encode() for name in names}
    for name, content in earlier.items():
        (out / name).write_bytes(content)
    monkeypatch.setattr(ellipsoids, "MESH_LIMIT", limit)
    seen, replace, mesh = [], os.replace, out / "case_ellipsoids.vtk"

    def state() -> tuple[bool, list[str]]:
        """Whether the earlier mesh is there, and which of this run's files are."""
        new = [n for n in names[:3] if (out / n).is_file() and (out / n).read_bytes() != earlier[n]]
        return mesh.is_file() and mesh.read_bytes() == earlier[mesh.name], new

    def watched(src, dst, *args, **kwargs):  # a stop can fall before each replacement or after it
        seen.append(state())
        replace(src, dst, *args, **kwargs)
        seen.append(state())

    monkeypatch.setattr(os, "replace", watched)
    inference = GaussianInference(tmp_path / "model.pt", tmp_path / "case.nii.gz", out, device="cpu")
    paths = inference._write(scan, affine, res, scan, 3.0)
    seen.append(state())
    assert [new for old_mesh, new in seen if old_mesh and new] == []
    assert any(new for _, new in seen) and seen[-1] == (False, names[:3])
    assert ("mesh" in paths) == mesh.is_file() == (limit == 12)


def test_above_the_mesh_limit_no_ellipsoids_are_written_and_one_line_gives_the_command(tmp_path, monkeypatch, caplog):
    """With more Gaussians than ``MESH_LIMIT`` (patched to 11, for 12 Gaussians) inference writes no
    ``<name>_ellipsoids.vtk``, removes the one an earlier run left there, returns and logs only the files it wrote,
    and says so in one line whose command (paths quoted: the folder's name has a space), run, writes the same file as
    ``save_ellipsoids`` of the Gaussians read back from the ``.ply`` (read by the independent VTK reader, and byte for
    byte); at the limit (12) the mesh is written."""
    import shlex

    import nibabel as nib

    from ellipsoid_helpers import read_vtk_polydata
    from medgmae import ellipsoids
    from medgmae.ellipsoids_cli import main
    from medgmae.mae_training.inference import GaussianInference
    from medgmae.ply import load_ply
    from medgmae.zeroshot import ZeroShotResult

    rng = np.random.default_rng(8)
    g = Gaussians3D(*(torch.tensor(a, dtype=torch.float32)[None] for a in (
        rng.uniform(-20, 20, (12, 3)), rng.uniform(0.3, 3.0, (12, 3)), rng.normal(size=(12, 4)), rng.uniform(0.1, 0.9, 12))))  # fmt: skip
    scan, affine = np.zeros((6, 7, 5), np.float32), _oblique_anisotropic_affine()
    nib.save(nib.Nifti1Image(scan, affine), str(tmp_path / "case.nii.gz"))
    res = ZeroShotResult(g, g, scan.shape, affine, PreprocessingSpec(), np.eye(4)[None])
    out = tmp_path / "my runs"
    inference = GaussianInference(tmp_path / "model.pt", tmp_path / "case.nii.gz", out, device="cpu")
    stale = out / "case_ellipsoids.vtk"
    out.mkdir()
    stale.write_bytes(b"an earlier run's ellipsoids")
    monkeypatch.setattr(ellipsoids, "MESH_LIMIT", 11)
    with caplog.at_level("INFO", logger="medgmae.mae_training"):
        paths = inference._write(scan, affine, res, scan, 3.0)
    assert sorted(paths) == ["nifti", "ply", "png"] and all(p.is_file() for p in paths.values()) and not stale.exists()
    lines = [r.getMessage() for r in caplog.records]
    said = [line for line in lines if "ellipsoids" in line]
    assert len(said) == 1 and said[0].startswith("case_ellipsoids.vtk not written: 12 Gaussians, more than the 11 "), lines
    assert any(line.startswith("12 Gaussians; wrote ") for line in lines)
    command = shlex.split(said[0].split("write it with: ", 1)[1])
    assert command[0] == "medgmae-ellipsoids" and command[1:] == [str(paths["ply"]), "--out", str(stale)]
    assert main(command[1:]) == 0
    expected = ellipsoids.save_ellipsoids(tmp_path / "expected.vtk", load_ply(paths["ply"])[0])
    mesh, reference = read_vtk_polydata(stale), read_vtk_polydata(expected)
    assert mesh["title"] == reference["title"] and len(mesh["points"]) == 12 * 162  # 12 Gaussians: level 2
    np.testing.assert_array_equal(mesh["points"], reference["points"])
    np.testing.assert_array_equal(np.array(mesh["polygons"]), np.array(reference["polygons"]))
    np.testing.assert_array_equal(mesh["scalars"]["intensity"], reference["scalars"]["intensity"])
    assert stale.read_bytes() == expected.read_bytes()
    monkeypatch.setattr(ellipsoids, "MESH_LIMIT", 12)
    caplog.clear()
    stale.unlink()
    with caplog.at_level("INFO", logger="medgmae.mae_training"):
        paths = inference._write(scan, affine, res, scan, 3.0)
    assert paths["mesh"] == stale and stale.read_bytes() == expected.read_bytes()
    assert "not written" not in caplog.text and str(stale) in caplog.text
