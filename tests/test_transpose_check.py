"""Views saved transposed (detector rows and columns swapped) are told apart from views as the geometry reads them
(:mod:`recon.transpose_check`): ``fbp`` and ``reconstruct`` warn alike of a transposed stack whose shape fits (a
square detector), while none of ``simulate``'s scans (parallel and cone beam, half and full turn, a short scan, a
half-fan, detector offsets, few views, Poisson noise) nor a stack truncated at the detector's sides gets the
warning; an image file whose axes hold the rows and columns swapped is refused with the reordering that fixes it."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medgmae.data.phantom import generate_phantom
from recon.cli import main
from recon.geometry import CTGeometry
from recon.transpose_check import transposed_note
from recon_cli_helpers import few_gaussians_args

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE, SPACING = (16, 16, 12), (12.0, 12.0, 16.0)  # the phantom's (x, y, z) voxels and mm
VOLUME, VOXEL = SHAPE[::-1], SPACING[::-1]  # the geometry's (z, y, x)


def _geometries(d: Path) -> dict[str, list[str]]:
    """``simulate``'s ``--geometry`` flags per scan: built-in orbits, and geometry files for a half-fan detector and
    square detectors (whose transposed views keep the stack's shape)."""
    cone = CTGeometry.cone(VOLUME, VOXEL, num_angles=16)
    width = cone.det_shape[1] * cone.det_spacing[1]
    half_fan = CTGeometry.cone(VOLUME, VOXEL, num_angles=24, det_shape=(cone.det_shape[0], cone.det_shape[1] // 2 + 3),
                               det_spacing=cone.det_spacing, det_offset=(width / 4, 0.0))  # fmt: skip
    assert half_fan.half_fan
    n = 24  # 24 x 12 mm covers the 271 mm diagonal and the 192 mm height
    files = {"half-fan": half_fan,
             "square parallel": CTGeometry.parallel(VOLUME, VOXEL, det_shape=(n, n), det_spacing=12.0, num_angles=20),
             "square cone": CTGeometry.cone(VOLUME, VOXEL, det_shape=(n + 8, n + 8), det_spacing=18.0, num_angles=20)}  # fmt: skip
    for name, g in files.items():
        g.save(d / f"{name}.json")
    fan = math.degrees(2 * math.atan(width / 2 / cone.source_detector))
    return {
        "parallel 10 views": ["--geometry", "parallel", "--views", "10"],
        "parallel full turn, offset": ["--geometry", "parallel", "--views", "20", "--arc", "360", "--det-offset", "24", "16"],
        "cone 12 views": ["--geometry", "cone", "--views", "12"],
        "cone short scan": ["--geometry", "cone", "--views", "16", "--arc", f"{180 + fan:.1f}"],
        "cone offset, 1e4 photons": ["--geometry", "cone", "--views", "16", "--det-offset", "30", "-20", "--photons", "1e4"],
        "parallel 1e5 photons": ["--geometry", "parallel", "--views", "12", "--photons", "1e5", "--seed", "3"],
        **{name: ["--geometry", str(d / f"{name}.json")] for name in files},
    }


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> dict[str, Path]:
    """``simulate``'s scans of two phantoms: ``"<scan> / seed <s>"`` -> its folder."""
    d = tmp_path_factory.mktemp("transposed")
    flags = _geometries(d)
    out = {}
    for seed in (1, 3):
        ph = generate_phantom(seed, shape=SHAPE, spacing=SPACING, noise=False)
        ct = d / f"ct{seed}.nii.gz"
        nib.save(nib.Nifti1Image(ph.image.astype(np.float32), ph.affine), str(ct))
        for name, given in flags.items():
            folder = d / f"{name.replace(' ', '_').replace(',', '')}_{seed}"
            assert main(["simulate", "--volume", str(ct), *given, "--out", str(folder), "--device", "cpu"]) == 0, name
            out[f"{name} / seed {seed}"] = folder
    return out


def _scan(folder: Path) -> tuple[np.ndarray, CTGeometry]:
    """A simulated scan's ``(views, rows, cols)`` projections and geometry."""
    return np.load(folder / "projections.npy"), CTGeometry.load(folder / "geometry.json")


def test_no_simulated_scan_looks_transposed(scans):
    """Every kind of scan ``simulate`` writes, noiseless or noisy, is taken as read; transposed, every one but the
    half-fan scan (which the check leaves out: its rows see part of their slice) is named transposed."""
    for name, folder in scans.items():
        proj, geom = _scan(folder)
        assert transposed_note(proj, geom) is None, name
        if not geom.half_fan:
            assert "the views look transposed" in (transposed_note(proj.transpose(0, 2, 1), geom) or ""), name


def test_a_truncated_stack_does_not_look_transposed(scans):
    """Projections cut at the detector's sides (an object wider than the detector) have row sums that vary from view
    to view, yet are not taken for transposed; views of few columns or too few views are not judged at all."""
    for name in ("parallel 10 views / seed 1", "cone 12 views / seed 3", "square parallel / seed 1"):
        proj, geom = _scan(scans[name])
        cols = proj.shape[2]
        cut = np.ascontiguousarray(proj[:, :, cols // 3 : cols - cols // 3])
        assert cut[:, cut.shape[1] // 2][:, [0, -1]].min() > 0.1 * cut.max(), name  # truncated in every view
        assert transposed_note(cut, geom) is None, name
    proj, geom = _scan(scans["square parallel / seed 1"])
    assert transposed_note(proj.transpose(0, 2, 1)[:3], geom) is None  # 3 views
    assert transposed_note(proj.transpose(0, 2, 1)[:, :, 10:13], geom) is None  # 3 columns


def _warnings(capsys, args: list[str]) -> list[str]:
    """The warning lines of ``main(args)``, which succeeds."""
    capsys.readouterr()
    assert main(args) == 0, args
    said = capsys.readouterr()
    return [line for line in (said.out + said.err).splitlines() if line.startswith("warning:")]


@pytest.mark.parametrize("kind", ["parallel", "cone"])
def test_fbp_and_reconstruct_warn_of_transposed_views(scans, kind, tmp_path, capsys):
    """A square detector's stack saved with each view transposed fits the geometry's shape; ``fbp`` and
    ``reconstruct`` both warn, in the same words, naming the file and the transpose; the stack as simulated gets no
    such warning from either."""
    folder = scans[f"square {kind} / seed 1"]
    flipped = tmp_path / "flipped.npy"
    np.save(flipped, np.load(folder / "projections.npy").transpose(0, 2, 1))
    for stack, warned in ((folder / "projections.npy", False), (flipped, True)):
        flags = ["--projections", str(stack), "--geometry", str(folder / "geometry.json")]
        fbp = _warnings(capsys, ["fbp", *flags, "--out", str(tmp_path / "fbp.nii.gz"), "--device", "cpu"])
        rec = _warnings(capsys, few_gaussians_args(folder, tmp_path / f"rec{warned}", *flags))
        said = [w for w in fbp if "look transposed" in w]
        assert said == [w for w in rec if "look transposed" in w], (fbp, rec)
        if not warned:
            assert not said, said
            continue
        assert len(said) == 1 and said[0].startswith(f"warning: projections {flipped}: the views look transposed"), said
        assert "numpy.transpose(stack, (0, 2, 1))" in said[0], said


def test_an_image_stack_with_rows_and_columns_swapped_gets_the_reordering(scans, tmp_path, capsys):
    """A MetaImage whose x runs over the rows and y over the columns (the cone scan's detector is not square, so the
    shapes differ) is refused with what each of its axes holds and a SimpleITK reordering; that reordering, with the
    identity direction, gives a stack that ``fbp`` reads as the simulated one."""
    import SimpleITK as sitk

    folder = scans["cone 12 views / seed 1"]
    proj = np.load(folder / "projections.npy")
    assert proj.shape[1] != proj.shape[2]
    image = sitk.GetImageFromArray(np.ascontiguousarray(proj.transpose(0, 2, 1)))  # x = row, y = column
    sitk.WriteImage(image, str(tmp_path / "swapped.mha"))
    geometry = str(folder / "geometry.json")
    args = ["fbp", "--projections", str(tmp_path / "swapped.mha"), "--geometry", geometry, "--out", str(tmp_path / "o.nii.gz")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "its x, y, z run over (rows, cols, views)" in err and "SimpleITK.PermuteAxes(image, [1, 0, 2])" in err, err
    fixed = sitk.PermuteAxes(sitk.ReadImage(str(tmp_path / "swapped.mha")), [1, 0, 2])
    fixed.SetDirection(np.eye(3).ravel())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(fixed), proj)
    sitk.WriteImage(fixed, str(tmp_path / "fixed.mha"))
    assert main(["fbp", "--projections", str(tmp_path / "fixed.mha"), "--geometry", geometry, "--out", str(tmp_path / "o.nii.gz"),
                 "--device", "cpu"]) == 0  # fmt: skip
