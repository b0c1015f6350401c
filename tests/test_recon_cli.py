"""``medgmae-recon`` end to end (simulate -> fbp -> reconstruct -> evaluate) and every input error path
(exit code 2, nothing written)."""

from __future__ import annotations

import json
from dataclasses import asdict
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from recon.cli import main
from recon.geometry import CTGeometry
from recon.metrics import evaluate

from recon_cli_helpers import ct, model_file, reconstruct_args, simulated  # noqa: F401 - ct, simulated and model_file are fixtures


pytestmark = pytest.mark.usefixtures("one_thread")


def _files(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*")) if d.exists() else []


def test_simulate_outputs(simulated, ct):
    assert _files(simulated) == ["fbp.nii.gz", "geometry.json", "projections.npy", "reference.nii.gz", "simulate.json"]
    geom = CTGeometry.load(simulated / "geometry.json")
    proj = np.load(simulated / "projections.npy")
    assert proj.shape == geom.proj_shape and geom.num_views == 10 and geom.kind == "parallel"
    ref = nib.load(str(simulated / "reference.nii.gz"))
    np.testing.assert_allclose(ref.affine, ct[1].affine)
    # HU -> attenuation: mu = 0.0192 (1 + HU / 1000), clipped at 0
    np.testing.assert_allclose(ref.get_fdata(), np.maximum(0.0192 * (1 + ct[1].image / 1000.0), 0), rtol=1e-5, atol=1e-7)
    assert geom.volume_shape == ct[1].image.shape[::-1] and geom.voxel_size == (16.0, 12.0, 12.0)


def test_simulate_cone_with_noise(ct, tmp_path):
    out = tmp_path / "cone"
    args = ["simulate", "--volume", str(ct[0]), "--geometry", "cone", "--views", "12", "--photons", "1e4", "--out", str(out), "--device", "cpu"]
    assert main(args) == 0
    noisy = np.load(out / "projections.npy")
    geom = CTGeometry.load(out / "geometry.json")
    from recon.projectors import TorchProjector

    ref = nib.load(str(out / "reference.nii.gz")).get_fdata().transpose(2, 1, 0)
    clean = TorchProjector(geom)(torch.from_numpy(ref).float()).numpy()
    diff = noisy - clean
    assert geom.kind == "cone" and 0 < np.abs(diff).mean() < 0.1 and abs(diff.mean()) < 0.01


def test_simulating_into_a_scan_folder_names_what_it_replaces(ct, tmp_path, capsys):
    out = tmp_path / "scan"
    args = ["simulate", "--volume", str(ct[0]), "--geometry", "parallel", "--views", "6", "--out", str(out), "--device", "cpu"]
    assert main(args) == 0 and "earlier scan" not in capsys.readouterr().out
    assert main([*args[:6], "8", *args[7:]]) == 0
    assert (f"note: {out} holds an earlier scan (projections.npy, geometry.json, reference.nii.gz, fbp.nii.gz, simulate.json): this "
            "simulation replaces it") in capsys.readouterr().out
    assert np.load(out / "projections.npy").shape[0] == 8
    (out / "recon_state.pt").write_bytes(b"state")  # a reconstruction of that scan, written into its folder
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir())
    assert main(args) == 2
    assert f"--out {out} holds a reconstruction (recon_state.pt)" in capsys.readouterr().err
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir()) == before  # nothing replaced


def test_an_unexpanded_tilde_in_a_path_is_the_home_folder(simulated, tmp_path, monkeypatch):
    """``--out "~/fbp.nii.gz"`` (quoted: the shell leaves it) is written in the home folder, as ``--out ~/fbp.nii.gz``
    would be: it had made a folder called ``~`` under the current one, then failed with nothing written."""
    home, elsewhere = tmp_path / "home", tmp_path / "cwd"
    home.mkdir(), elsewhere.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(elsewhere)
    assert main(["fbp", "--projections", str(simulated / "projections.npy"), "--geometry", str(simulated / "geometry.json"),
                 "--out", "~/sub/fbp.nii.gz", "--device", "cpu"]) == 0  # fmt: skip
    np.testing.assert_allclose(nib.load(str(home / "sub" / "fbp.nii.gz")).get_fdata(),
                               nib.load(str(simulated / "fbp.nii.gz")).get_fdata(), atol=1e-6)  # fmt: skip
    assert list(elsewhere.iterdir()) == [] and sorted(p.name for p in home.iterdir()) == ["sub"]


def test_end_to_end(simulated, model_file, tmp_path, capsys):
    fbp_out = tmp_path / "fbp2.nii.gz"
    assert main(["fbp", "--projections", str(simulated / "projections.npy"), "--geometry", str(simulated / "geometry.json"), "--out", str(fbp_out), "--device", "cpu"]) == 0
    np.testing.assert_allclose(nib.load(str(fbp_out)).get_fdata(), nib.load(str(simulated / "fbp.nii.gz")).get_fdata(), atol=1e-6)
    for init, iters, extra in (("fbp", 12, ["--num-gaussians", "200", "--split-rule", "moments", "--coarse-iterations", "3"]),
                               ("medgmae", 20, ["--checkpoint", str(model_file[0]), "--num-gaussians", "1500"])):
        out = tmp_path / f"rec_{init}"
        args = [
            "reconstruct", "--projections", str(simulated / "projections.npy"), "--geometry", str(simulated / "geometry.json"),
            "--fbp", str(simulated / "fbp.nii.gz"), "--init", init, "--iterations", str(iters), "--eval-every", "4",
            "--reference", str(simulated / "reference.nii.gz"), "--out", str(out), "--no-progress", "--device", "cpu", *extra,
        ]  # fmt: skip
        assert main(args) == 0, init
        assert _files(out) == ["curve.png", "ellipsoids.vtk", "gaussians.ply", "metrics.json", "recon.nii.gz", "recon_state.pt",
                               "slices.png"]  # fmt: skip
        metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
        assert metrics["iterations"] == iters and metrics["init"] == init and metrics["preset"] == "toolkit"
        assert metrics["settings"]["split_rule"] == ("moments" if init == "fbp" else "sample")  # --split-rule, the default
        assert metrics["settings"]["coarse_iterations"] == (3 if init == "fbp" else 0)  # --coarse-iterations, the default
        if init == "medgmae":
            _check_the_medgmae_start(metrics, model_file[0], capsys.readouterr().out)
        else:
            assert metrics["initial_gaussians"] == 200
        _check_slices(out / "slices.png", rows=4)
        assert [h["iteration"] for h in metrics["history"]] == list(range(4, iters + 1, 4))
        assert set(metrics["iterations_to_psnr"]) == {"30", "35"}
        rec = nib.load(str(out / "recon.nii.gz"))
        np.testing.assert_allclose(rec.affine, nib.load(str(simulated / "reference.nii.gz")).affine)
        assert metrics["voxels_per_gaussian"] == pytest.approx(np.prod(rec.shape) / metrics["num_gaussians"])
        _check_evaluate_and_the_ply(out, metrics, rec, simulated / "reference.nii.gz", capsys)
    # resume continues from the saved state to a longer run
    out = tmp_path / "rec_fbp"
    args = [
        "reconstruct", "--projections", str(simulated / "projections.npy"), "--geometry", str(simulated / "geometry.json"),
        "--init", "fbp", "--num-gaussians", "200", "--iterations", "16", "--eval-every", "4", "--resume", "--out", str(out),
        "--no-progress", "--device", "cpu", "--fbp", str(simulated / "fbp.nii.gz"), "--split-rule", "moments", "--coarse-iterations", "3",
    ]  # fmt: skip
    assert main(args) == 0
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8"))["iterations"] == 16


def _check_the_medgmae_start(metrics: dict, model_pt: Path, said: str) -> None:
    """--init medgmae: the sparse start grows to the budget on the schedule of sparse_start_growth, and the
    pre-processing read from model.pt is said (``said``: the run's console output) and recorded."""
    assert metrics["init_settings"]["grow_to"] == 1500 and metrics["settings"]["max_gaussians"] == 1500
    assert metrics["settings"]["densify_every"] == 10
    assert [r["iteration"] for r in metrics["density_rounds"]] == [10]  # densify_until: 0.6 x 20
    rnd = metrics["density_rounds"][0]
    assert rnd["num_gaussians"] == metrics["history"][2]["num_gaussians"] > metrics["initial_gaussians"]  # at 12
    assert f"density control: 1 round (iteration 10): {rnd['cloned']} cloned, {rnd['split']} split" in said
    # the pre-processing read from model.pt is said once, as fine-tuning says its own, and recorded
    recorded = f"recorded in {model_pt}"
    assert [ln for ln in said.splitlines() if "pre-processing" in ln] == [
        f"--init medgmae pre-processing: orientation RAS ({recorded}), spacing [12.0, 12.0, 12.0] mm ({recorded}), "
        f"HU window [-175.0, 250.0] ({recorded}), window 16x16x16"]  # fmt: skip
    spec = metrics["init_settings"]["preprocessing"]
    assert spec["spacing"] == [12.0] * 3 and spec["hu_window"] == [-175.0, 250.0] and spec["input_size"] == [16] * 3
    assert spec["orientation"] == "RAS" and spec["from"] == {k: recorded for k in ("orientation", "spacing", "hu_window")}


def _check_evaluate_and_the_ply(out: Path, metrics: dict, rec, reference: Path, capsys) -> None:
    """``medgmae-recon evaluate`` of the reconstruction prints its final metrics; gaussians.ply holds its Gaussians."""
    capsys.readouterr()
    assert main(["evaluate", "--recon", str(out / "recon.nii.gz"), "--reference", str(reference)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["psnr"] == pytest.approx(metrics["final"]["psnr"], abs=1e-3)
    ref = nib.load(str(reference)).get_fdata()
    assert printed == pytest.approx(evaluate(rec.get_fdata(), ref), abs=1e-6)
    from medgmae.ply import load_ply

    g, meta = load_ply(out / "gaussians.ply")
    assert g.num_gaussians == metrics["num_gaussians"] and meta["shape"] == rec.shape


def _check_slices(path, rows):
    """One row of three orthogonal mid-slices per volume (equal rows under a 14 px title band), none blank."""
    from PIL import Image

    img = np.asarray(Image.open(path).convert("L"), dtype=np.float64)[14:]
    band = (img.shape[0] - 2) // rows  # tile_grid: rows of one height, 2 px gaps
    assert band > 100 and img.shape[0] == rows * band + 2
    for r in range(rows):  # every row shows something
        assert img[2 + r * band + 14 : 2 + (r + 1) * band - 2].var() > 0, r


def test_preset_3dgr_ct_records_every_setting(simulated, tmp_path, capsys):
    """``--preset 3dgr-ct`` runs 3DGR-CT's initialisation and settings and records them; without a reference the
    slices show FBP / reconstruction and the summary says no PSNR was computed; ``--checkpoint-every 0`` saves the
    state at the end, and resuming it under another preset is refused."""
    from recon.presets import THREEDGR_CT_INIT, preset_config

    out = tmp_path / "rec3dgr"
    assert main(reconstruct_args(simulated, out, "--preset", "3dgr-ct", "--iterations", "4", "--checkpoint-every", "0")) == 0
    printed = capsys.readouterr().out
    assert "preset 3dgr-ct" in printed and "PSNR/SSIM not computed" in printed and str(out / "slices.png") in printed
    assert "orthogonal mid-slices: rows FBP / reconstruction)" in printed and "reference /" not in printed  # what was drawn
    assert "(loss at the last iteration only)" in printed and "PSNR" not in printed.split("curve.png")[1].splitlines()[0]
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["preset"] == "3dgr-ct" and metrics["init"] == "3dgr-ct" and metrics["arguments"]["preset"] == "3dgr-ct"
    expected = json.loads(json.dumps(asdict(preset_config("3dgr-ct", 4, eval_every=50, seed=0))))
    assert metrics["settings"] == expected
    assert metrics["init_settings"]["ini_sigma"] == THREEDGR_CT_INIT["ini_sigma"] == 0.15
    assert metrics["init_settings"]["num_gaussians"] == 50000 and metrics["initial_gaussians"] < 50000  # a tiny volume
    _check_slices(out / "slices.png", rows=2)
    assert (out / "recon_state.pt").is_file()
    state = torch.load(out / "recon_state.pt", weights_only=True)
    assert state["iteration"] == 4 and state["config"]["preset_name"] == "3dgr-ct"
    capsys.readouterr()
    assert main(reconstruct_args(simulated, out, "--iterations", "6", "--resume")) == 2
    assert "--preset: saved '3dgr-ct', now 'toolkit'" in capsys.readouterr().err


def test_error_paths_exit_2_and_write_nothing(simulated, model_file, ct, tmp_path, capsys):
    sim = simulated
    sim_voxels = int(np.prod(CTGeometry.load(sim / "geometry.json").volume_shape))
    bad_proj = tmp_path / "inputs" / "short.npy"
    bad_proj.parent.mkdir()
    np.save(bad_proj, np.load(sim / "projections.npy")[:5])
    nan_proj = tmp_path / "inputs" / "nan.npy"
    p = np.load(sim / "projections.npy")
    p[0, 0, 0] = np.nan
    np.save(nan_proj, p)
    bad_geom = tmp_path / "inputs" / "bad.json"
    bad_geom.write_text(json.dumps({**json.loads((sim / "geometry.json").read_text(encoding="utf-8")), "voxel_size": [0, 1, 1]}))
    small = tmp_path / "inputs" / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(small))
    garbage = tmp_path / "inputs" / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    out = tmp_path / "out"
    cases = {
        "missing volume": (["simulate", "--volume", str(tmp_path / "nope.nii.gz"), "--geometry", "cone", "--views", "4", "--out", str(out)], "does not exist"),
        "missing projections": (["fbp", "--projections", str(tmp_path / "nope.npy"), "--geometry", str(sim / "geometry.json"), "--out", str(out / "f.nii.gz")], "does not exist"),
        "missing geometry": (["fbp", "--projections", str(sim / "projections.npy"), "--geometry", str(tmp_path / "g.json"), "--out", str(out / "f.nii.gz")], "does not exist"),
        "geometry folder": (["fbp", "--projections", str(sim / "projections.npy"), "--geometry", str(sim), "--out", str(out / "f.nii.gz")],
                            f"geometry file {sim} is a folder: give {sim / 'geometry.json'}"),  # it said "does not exist"
        "shape mismatch fbp": (["fbp", "--projections", str(bad_proj), "--geometry", str(sim / "geometry.json"), "--out", str(out / "f.nii.gz")], "expects"),
        "shape mismatch": (reconstruct_args(sim, out, "--projections", str(bad_proj), "--init", "fbp"), "expects"),
        "nan projections": (reconstruct_args(sim, out, "--projections", str(nan_proj), "--init", "fbp"), "NaN"),
        "bad geometry": (reconstruct_args(sim, out, "--geometry", str(bad_geom), "--init", "fbp"), "voxel_size"),
        "medgmae without checkpoint": (reconstruct_args(sim, out, "--init", "medgmae"), "--checkpoint"),
        "missing checkpoint": (reconstruct_args(sim, out, "--init", "medgmae", "--checkpoint", str(tmp_path / "m.pt")), "does not exist"),
        "run folder as checkpoint": (reconstruct_args(sim, out, "--init", "medgmae", "--checkpoint", str(model_file[0].parent)),
                                     f"{model_file[0].parent} is a folder, not a file; did you mean {model_file[0]}?"),
        "wrong-kind checkpoint": (reconstruct_args(sim, out, "--init", "medgmae", "--checkpoint", str(model_file[1])), "medgmae-encoder checkpoint (pre-trained ViT encoder, from a medgmae run); --init medgmae needs a medgmae or medgmae-star model.pt"),
        "corrupt checkpoint": (reconstruct_args(sim, out, "--init", "medgmae", "--checkpoint", str(garbage)), "garbage.pt"),
        "reference shape": (reconstruct_args(sim, out, "--init", "fbp", "--reference", str(small)), "reference"),
        "resume without state": (reconstruct_args(sim, out, "--init", "fbp", "--resume"), "run the command without --resume to start afresh"),
        "fbp init with checkpoint": (reconstruct_args(sim, out, "--preset", "3dgr-ct", "--checkpoint", str(model_file[0])), "--init 3dgr-ct"),
        "split rule of the other preset": (reconstruct_args(sim, out, "--preset", "3dgr-ct", "--split-rule", "moments"), "--split-rule chooses the toolkit"),
        "too many held-out views": (reconstruct_args(sim, out, "--holdout-views", "6"), "has 10 views; hold out between 1 and 5"),
        "gaussians beyond 8 per voxel": (reconstruct_args(sim, out, "--init", "random", "--num-gaussians", "1e9"),
                                         f"--num-gaussians 1000000000: more than 8 per voxel of the {sim_voxels:,}-voxel volume "
                                         f"({max(8 * sim_voxels, 20000):,}); --init random's default here is 20,000"),
        "patience without held-out views": (reconstruct_args(sim, out, "--patience", "2"), "needs --holdout-views"),
        "refit without held-out views": (reconstruct_args(sim, out, "--refit"), "needs --holdout-views"),
        "given fbp with held-out views": (reconstruct_args(sim, out, "--holdout-views", "2", "--fbp", str(sim / "fbp.nii.gz")), "has seen the held-out views"),
        "evaluate missing": (["evaluate", "--recon", str(tmp_path / "r.nii.gz"), "--reference", str(sim / "reference.nii.gz")], "does not exist"),
        "evaluate shapes": (["evaluate", "--recon", str(small), "--reference", str(sim / "reference.nii.gz")], "shape"),
    }
    for name, (args, msg) in cases.items():
        capsys.readouterr()
        assert main(args) == 2, name
        err = capsys.readouterr().err
        assert msg in err and "error" in err, (name, err)
        assert not out.exists(), name
        assert not [f for f in tmp_path.iterdir() if f.name.startswith(".")], name  # no staging leftovers


def test_argparse_errors_exit_2(simulated, capsys):
    assert main(["simulate", "--volume", "x.nii.gz", "--geometry", "fan", "--views", "4", "--out", "o"]) == 2
    assert "--geometry fan: neither parallel, cone nor an existing geometry.json file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["simulate", "--volume", "x.nii.gz", "--geometry", "cone", "--views", "-3", "--out", "o"])
    assert e.value.code == 2


def test_python_m_recon_process_exit_code(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    r = subprocess.run(
        [sys.executable, "-m", "recon", "reconstruct", "--projections", str(tmp_path / "p.npy"), "--geometry", str(tmp_path / "g.json"), "--init", "medgmae", "--out", str(tmp_path / "o")],
        capture_output=True, encoding="utf-8", errors="replace", env=env, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2 and "--checkpoint" in r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flip", [1.0, -1.0])
def test_slices_are_drawn_to_scale(tmp_path, flip):
    """A cube of 18 mm in voxels of 3 x 1 x 1 mm ((z, y, x)), under an affine that flips x and y or not, is a square
    in all three views of slices.png, and the error row is in colour."""
    from PIL import Image
    from scipy import ndimage

    from recon.plot import draw_slices

    vol = np.zeros((10, 30, 30))
    vol[2:8, 6:24, 6:24] = 1.0  # 6 slices x 3 mm = 18 rows x 1 mm = 18 columns x 1 mm
    affine = np.diag([flip, flip, 3.0, 1.0])  # (x, y, z) order: 1, 1, 3 mm
    width, height = draw_slices({"cube": vol * 0.5}, tmp_path / "s.png", affine, reference=vol)
    img = np.asarray(Image.open(tmp_path / "s.png").convert("RGB"))
    assert img.shape[:2] == (height, width)
    labels, _ = ndimage.label(np.all(img == 255, axis=-1))  # the cube at the top of the shared window
    boxes = [(r.stop - r.start, c.stop - c.start) for r, c in ndimage.find_objects(labels)]
    cubes = [(h, w) for h, w in boxes if h * w > 100]  # not the specks of the labels' lettering
    assert len(cubes) == 3, boxes  # sagittal, coronal and axial of the reference row (the "cube" row is grey)
    for h, w in cubes:
        assert h > 60 and abs(h / w - 1) < 0.05, (h, w)
    from medgmae.engine.figures import LETTER_COLOUR

    colour = np.abs(img.astype(int) - img.mean(-1, keepdims=True)).max(-1) > 30
    colour &= ~np.all(img == LETTER_COLOUR, axis=-1)  # the orientation letters of every tile
    rows = np.nonzero(colour.any(1))[0]
    assert rows.size and rows.min() > height * 2 / 3  # only the error map, the last of three rows, is coloured


def test_simulate_warns_once_that_a_sheared_volume_is_simulated_on_an_orthogonal_grid(tmp_path, capsys):
    """A gantry-tilted volume (slices 0.625 mm apart, each shifted 0.625 x tan(20 degrees) mm along y) is simulated
    on an orthogonal grid of its column lengths (z: 0.665 mm, not the 0.625 mm slice spacing): said once, naming the
    file; an unsheared oblique volume is not warned about."""
    hu = np.full((12, 12, 8), -1000.0, np.float32)
    hu[3:9, 3:9, 2:6] = 40.0
    tilt = np.tan(np.radians(20.0))
    sheared = np.array([[-0.7, 0, 0, 180], [0, -0.7, 0.625 * tilt, 200], [0, 0, 0.625, -300], [0, 0, 0, 1.0]])
    c, s = np.cos(0.3), np.sin(0.3)
    oblique = np.array([[0.7 * c, -0.7 * s, 0, 1], [0.7 * s, 0.7 * c, 0, 2], [0, 0, 0.625, 3], [0, 0, 0, 1.0]])
    for name, affine in (("tilt", sheared), ("oblique", oblique)):
        nib.save(nib.Nifti1Image(hu, affine), str(tmp_path / f"{name}.nii.gz"))
        assert main(["simulate", "--volume", str(tmp_path / f"{name}.nii.gz"), "--device", "cpu", "--geometry", "parallel", "--views", "4",
                     "--out", str(tmp_path / name)]) == 0
        out = capsys.readouterr().out
        said = [line for line in out.splitlines() if "sheared" in line]
        if name == "oblique":
            assert said == [], said
            continue
        assert len(said) == 1 and said[0].startswith(f"warning: {tmp_path / 'tilt.nii.gz'}: the volume's affine is sheared"), said
        z = np.hypot(0.625, 0.625 * tilt)  # the column length the grid is given, against the 0.625 mm spacing
        assert f"voxel sizes (z, y, x) {z:.4g} x 0.7 x 0.7 mm" in said[0], said
        assert "resample the tilt" in said[0]
        assert CTGeometry.load(tmp_path / name / "geometry.json").voxel_size[0] == pytest.approx(z, rel=1e-5)
