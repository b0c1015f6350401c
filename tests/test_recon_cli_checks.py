"""``medgmae-recon``: inputs refused before any work (exit 2, the message naming the file or flag, nothing written)."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from recon.cli import main

from recon_cli_helpers import expect_refusal, few_gaussians_args, no_leftovers, scan  # noqa: F401 - scan is a fixture

pytestmark = pytest.mark.usefixtures("one_thread")


def _geometry_with_affine(scan: Path, path: Path, affine) -> Path:
    g = json.loads((scan / "geometry.json").read_text(encoding="utf-8"))
    path.write_text(json.dumps({**g, "affine": affine}))
    return path


def test_bad_affines_in_the_geometry_are_refused(scan, tmp_path, capsys):
    """A 2x2, NaN, singular, bad-last-row affine, or one whose column norms contradict voxel_size (z, y, x):
    refused when the geometry is read, naming the file, before anything is written."""
    good = np.asarray(json.loads((scan / "geometry.json").read_text(encoding="utf-8"))["affine"])
    sz, sy, sx = json.loads((scan / "geometry.json").read_text(encoding="utf-8"))["voxel_size"]
    assert np.allclose(np.linalg.norm(good[:3, :3], axis=0), (sx, sy, sz))  # the order the check expects
    nan, singular, last, swapped = good.copy(), good.copy(), good.copy(), good.copy()
    nan[0, 3] = np.nan
    singular[:3, 1] = singular[:3, 0]
    last[3, 0] = 1.0
    swapped[:3, [0, 2]] = swapped[:3, [2, 0]]  # the norms in (z, y, x) order: wrong with sx != sz
    cases = {"2x2": ([[1, 0], [0, 1]], "4x4"), "nan": (nan.tolist(), "finite"), "singular": (singular.tolist(), "singular"),
             "last row": (last.tolist(), "last row"), "norms": (swapped.tolist(), "contradict voxel_size")}  # fmt: skip
    for name, (affine, message) in cases.items():
        geom = _geometry_with_affine(scan, tmp_path / f"{name.replace(' ', '_')}.json", affine)
        out = tmp_path / "out"
        fbp_args = ["fbp", "--projections", str(scan / "projections.npy"), "--geometry", str(geom), "--out", str(out / "f.nii.gz")]
        for args in (fbp_args, few_gaussians_args(scan, out, "--geometry", str(geom))):
            expect_refusal(capsys, args, f"geometry file {geom}", message)
            assert not out.exists() and not no_leftovers(tmp_path), name


@pytest.mark.parametrize("command", ["simulate", "reconstruct"])
def test_out_folder_that_is_a_file_is_refused_up_front(scan, tmp_path, capsys, command):
    """``--out`` naming an existing file, or a folder below one: exit 2 naming the path, the file unchanged."""
    afile = tmp_path / "afile"
    afile.write_text("keep")
    for out in (afile, afile / "sub"):
        if command == "simulate":
            args = ["simulate", "--volume", str(scan.parent / "ct.nii.gz"), "--geometry", "parallel", "--views", "4",
                    "--device", "cpu", "--out", str(out)]  # fmt: skip
        else:
            args = few_gaussians_args(scan, out)
        expect_refusal(capsys, args, f"--out {out}", "existing file")
        assert afile.read_text(encoding="utf-8") == "keep" and not no_leftovers(tmp_path)


def test_fbp_out_must_be_a_nifti_file(scan, tmp_path, capsys):
    """``fbp --out`` without a .nii / .nii.gz ending, naming a folder, or below a file: refused before the FBP."""
    (tmp_path / "adir.nii.gz").mkdir()
    (tmp_path / "afile").write_text("keep")
    base = ["fbp", "--projections", str(scan / "projections.npy"), "--geometry", str(scan / "geometry.json")]
    cases = {"fbp_out.npy": "must end with .nii or .nii.gz", "fbpnoext": "must end with .nii or .nii.gz",
             "bad/": "is a folder", "adir.nii.gz": "is a folder", "afile/f.nii.gz": "existing file"}  # fmt: skip
    for name, message in cases.items():
        out = str(tmp_path / name) + ("/" if name.endswith("/") else "")
        expect_refusal(capsys, [*base, "--out", out], f"--out {out}", message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir.nii.gz", "afile"]
    assert main([*base, "--out", str(tmp_path / "ok.NII")]) == 0  # the ending is case-insensitive


def test_outputs_too_long_to_create_are_refused_up_front(scan, tmp_path, capsys):
    """An ``--out`` folder or file (and ``select --json``), or an input, with a name over the file system's 255 bytes:
    exit 2 naming it; every command crashed with ``OSError: [Errno 36] File name too long``."""
    folder, nifti, table = (tmp_path / ("x" * 300 + end) for end in ("", ".nii.gz", ".json"))
    base = ["--projections", str(scan / "projections.npy"), "--geometry", str(scan / "geometry.json")]
    cases = [
        (["simulate", "--volume", str(scan.parent / "ct.nii.gz"), "--geometry", "parallel", "--views", "4",
          "--device", "cpu", "--out", str(folder)], f"--out {folder}: a name in it is 300 bytes long"),
        (["fbp", *base, "--out", str(nifti)], f"--out {nifti}: a name in it is 307 bytes long"),
        (few_gaussians_args(scan, folder), f"--out {folder}: a name in it is 300 bytes long"),
        (["select", "--runs", str(tmp_path), "--json", str(table)], f"--json {table}: a name in it is 305 bytes long"),
    ]  # fmt: skip
    long_input = str(tmp_path / ("z" * 300 + ".nii.gz"))  # an input too long to look up: named, exit 2
    cases += [
        (["simulate", "--volume", long_input, "--geometry", "parallel", "--views", "4", "--out", str(tmp_path / "s")],
         f"{long_input}: a name in it is 307 bytes long"),
        (["evaluate", "--recon", long_input, "--reference", str(scan / "reference.nii.gz")], f"{long_input}: a name"),
        (["fbp", "--projections", long_input, "--geometry", str(scan / "geometry.json"), "--out", str(tmp_path / "f.nii")],
         f"{long_input}: a name"),
    ]  # fmt: skip
    for args, message in cases:
        expect_refusal(capsys, args, message, "longer than the 255 the file system takes")
    assert list(tmp_path.iterdir()) == []


def test_evaluate_and_reconstruct_refuse_a_volume_off_the_grid(scan, tmp_path, capsys):
    """``evaluate`` and ``reconstruct`` check the voxel grid alike: a volume shifted by 50 mm, or one slice short,
    is refused with both names, both shapes (x, y, z) and the offset (tolerance 1e-2 of the 12 mm voxel)."""
    ref = nib.load(str(scan / "reference.nii.gz"))
    data = np.asarray(ref.dataobj, np.float32)  # (x, y, z) = (16, 16, 12)
    shifted_affine = ref.affine.copy()
    shifted_affine[0, 3] += 50.0
    shifted, short = tmp_path / "shifted.nii.gz", tmp_path / "short.nii.gz"
    nib.save(nib.Nifti1Image(data, shifted_affine), str(shifted))
    nib.save(nib.Nifti1Image(data[:, :, :11], ref.affine), str(short))
    fbp = scan / "fbp.nii.gz"
    args = ["evaluate", "--recon", str(fbp), "--reference", str(shifted)]
    expect_refusal(capsys, args, f"--recon {fbp} is not on the voxel grid of --reference {shifted}: voxels up to 50 mm "
                   "apart (tolerance 0.12 mm)")  # fmt: skip
    args = ["evaluate", "--recon", str(fbp), "--reference", str(short)]
    expect_refusal(capsys, args, f"--reference {short}: shape 16 x 16 x 12 vs 16 x 16 x 11")
    assert main(["evaluate", "--recon", str(fbp), "--reference", str(scan / "reference.nii.gz")]) == 0
    capsys.readouterr()
    # a volume against itself: PSNR is infinite, printed as null (strict JSON has no Infinity)
    assert main(["evaluate", "--recon", str(scan / "reference.nii.gz"), "--reference", str(scan / "reference.nii.gz")]) == 0
    printed = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    assert printed["psnr"] is None and printed["ssim"] == pytest.approx(1.0)
    out, geometry = tmp_path / "rec", scan / "geometry.json"
    expect_refusal(capsys, few_gaussians_args(scan, out, "--fbp", str(shifted)),
                   f"FBP volume {shifted} is not on the voxel grid of the geometry {geometry}: voxels up to 50 mm "
                   "apart")  # fmt: skip
    expect_refusal(capsys, few_gaussians_args(scan, out, "--reference", str(short)),
                   f"reference {short} is not on the voxel grid of the geometry {geometry}: shape 16 x 16 x 11 vs "
                   "16 x 16 x 12")  # fmt: skip
    # the same voxels stored mirrored along x (a viewer shows them in place): refused, the advice naming the geometry
    mirrored_affine = ref.affine @ np.array([[-1, 0, 0, 15], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    mirrored = tmp_path / "mirrored.nii.gz"
    nib.save(nib.Nifti1Image(data[::-1].copy(), mirrored_affine), str(mirrored))
    expect_refusal(capsys, few_gaussians_args(scan, out, "--fbp", str(mirrored)),
                   f"FBP volume {mirrored} is not on the voxel grid of the geometry {geometry}: the same voxels stored "
                   f"in another axis order or direction (reorient it to the orientation of the geometry {geometry})")
    assert not out.exists()


def test_projections_that_are_not_line_integrals_are_refused(scan, tmp_path, capsys):
    """Negated line integrals and raw integer counts are refused naming the file (an all-negative attenuation volume
    resulted); floats beyond any CT line integral are warned about."""
    proj = np.load(scan / "projections.npy")
    cases = {"negated.npy": (-proj, "have no positive value"), "shifted.npy": (proj - 0.3 * proj.max(), "are mostly negative"),
             "counts.npy": (np.round(1e4 * np.exp(-proj)).astype(np.int32), "integers up to 10000, raw detector counts")}
    for name, (values, message) in cases.items():
        np.save(tmp_path / name, values)
        out = tmp_path / f"{name}.nii.gz"
        args = ["fbp", "--projections", str(tmp_path / name), "--geometry", str(scan / "geometry.json"), "--out", str(out)]
        expect_refusal(capsys, args, f"projections {tmp_path / name}", message)
        assert not out.exists()
    np.save(tmp_path / "scaled.npy", 100 * proj)
    args = ["fbp", "--projections", str(tmp_path / "scaled.npy"), "--geometry", str(scan / "geometry.json"), "--out", str(tmp_path / "s.nii.gz")]
    assert main(args) == 0 and "warning: projections" in capsys.readouterr().out


def test_npy_projections_that_are_not_arrays_of_numbers_are_refused(scan, tmp_path, capsys):
    """A .npy name on another format says so (NumPy's format starts with the bytes \\x93NUMPY), an object array
    says it holds Python objects (never suggesting an unsafe load), a string array names its type; every message
    names the file and nothing is written."""
    (tmp_path / "text.npy").write_text("garbage\n")
    np.save(tmp_path / "objects.npy", np.empty((10, 12, 16), dtype=object), allow_pickle=True)
    np.save(tmp_path / "strings.npy", np.full((10, 12, 16), "a"))
    cases = {"text.npy": "is not a NumPy .npy file", "objects.npy": "holds Python objects, not numbers",
             "strings.npy": "holds <U1 values, not real numbers"}
    for name, message in cases.items():
        out = tmp_path / f"{name}.nii.gz"
        args = ["fbp", "--projections", str(tmp_path / name), "--geometry", str(scan / "geometry.json"), "--out", str(out)]
        err = expect_refusal(capsys, args, f"projections {tmp_path / name} {message}")
        assert "allow_pickle" not in err and not out.exists()


def test_projections_given_a_folder_say_it_is_a_folder(scan, tmp_path, capsys):
    out = tmp_path / "f.nii.gz"
    args = ["fbp", "--projections", str(scan), "--geometry", str(scan / "geometry.json"), "--out", str(out)]
    err = expect_refusal(capsys, args, f"projections {scan} is a folder, not a file")
    assert "does not exist" not in err and not out.exists()


@pytest.mark.parametrize(
    "extra, messages",
    [
        (["--views-per-iteration", "11"], ["--views-per-iteration 11 is more than the 10 views fitted"]),
        (["--views-per-iteration", "9", "--holdout-views", "2"], ["--views-per-iteration 9 is more than the 8 views fitted", "(2 held out)"]),
        (["--model-spacing", "1.5"], ["--model-spacing is only used by --init medgmae (got --init fbp)"]),
        (["--model-spacing", "1.5", "--preset", "3dgr-ct"], ["--model-spacing is only used by --init medgmae (got --init 3dgr-ct)"]),
        (["--init", "medgmae", "--checkpoint", "m.pt", "--model-spacing", "1", "2"], ["--model-spacing takes one value (isotropic) or three, got 2"]),
        (["--coarse-iterations", "3"], ["--coarse-iterations 3 is more than --iterations 2"]),
        (["--max-gaussians", "99"], ["--max-gaussians 99 is below the start's 100 Gaussians (--num-gaussians)", "give --max-gaussians 100"]),
    ],
)
def test_reconstruct_flags_that_cannot_apply_are_refused(scan, tmp_path, capsys, extra, messages):
    """The scan fixture has 10 views and the runs 2 iterations; nothing is written."""
    out = tmp_path / "rec"
    expect_refusal(capsys, few_gaussians_args(scan, out, *extra), *messages)
    assert not out.exists()


def test_a_negative_checkpoint_interval_is_refused(scan, tmp_path, capsys):
    """It was taken as 0 (states at the end only); argparse refuses it like the other counts."""
    out = tmp_path / "rec"
    with pytest.raises(SystemExit) as e:
        main(few_gaussians_args(scan, out, "--checkpoint-every", "-3"))
    assert e.value.code == 2 and "--checkpoint-every: expected a non-negative integer, got '-3'" in capsys.readouterr().err
    assert not out.exists()
    args = few_gaussians_args(scan, out)
    args[args.index("--iterations") + 1] = "0"  # it wrote every output of the bare start as a reconstruction
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2 and "--iterations: expected a positive integer, got '0'" in capsys.readouterr().err
    assert not out.exists()


def test_reconstruct_flags_at_their_limits_run(scan, tmp_path):
    """Every view per iteration, a coarse phase as long as the run, states at the end only: accepted."""
    out = tmp_path / "rec"
    assert main(few_gaussians_args(scan, out, "--views-per-iteration", "10", "--coarse-iterations", "2", "--checkpoint-every", "0",
                                   "--max-gaussians", "100")) == 0  # fmt: skip
    settings = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["settings"]
    assert settings["views_per_iteration"] == 10 and settings["max_gaussians"] == 100


def test_backend_astra_that_cannot_take_the_scan_is_refused_before_any_work(small_parallel_scan, tmp_path, capsys):
    """ASTRA has no cone beam on the CPU: ``--backend astra`` on a cone-beam scan there is refused with the flag and
    the backend that can (--backend auto), before the FDK and the start are computed (the projector's own error came
    after both), nothing written."""
    ct = small_parallel_scan[1]
    assert main(["simulate", "--volume", str(ct), "--geometry", "cone", "--views", "6", "--out", str(tmp_path / "cone"),
                 "--device", "cpu"]) == 0  # fmt: skip
    out = tmp_path / "rec"
    capsys.readouterr()
    assert main(few_gaussians_args(tmp_path / "cone", out, "--backend", "astra")) == 2
    printed = capsys.readouterr()
    assert "--backend astra cannot take this cone-beam scan on cpu" in printed.err, printed.err
    assert "--backend auto" in printed.err
    assert "FDK" not in printed.out and "initialising" not in printed.out and not out.exists()
