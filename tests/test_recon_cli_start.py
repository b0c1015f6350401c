"""``medgmae-recon reconstruct``'s start and outputs: the Gaussian budget, start warnings, summary notes, world frames."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from medgmae.data.phantom import generate_phantom
from recon.cli import main
from recon.geometry import CTGeometry

from recon_cli_helpers import expect_refusal, few_gaussians_args, scan  # noqa: F401 - scan is a fixture

pytestmark = pytest.mark.usefixtures("one_thread")


def test_gaussians_ply_and_ellipsoids_vtk_are_in_world_millimetres(tmp_path, capsys):
    """One ``reconstruct`` of a scan with an oblique, anisotropic, shifted affine, read back two ways.

    gaussians.ply: the centres are ``affine @ (x, y, z, 1)`` of the voxel centres the state holds (``(z, y, x)``
    order), and the covariances map as ``M Sigma M^T``; the header's shape and affine are recon.nii.gz's as nibabel
    reads them (the NIfTI's (I, J, K) order, as zero-shot PLYs).

    ellipsoids.vtk, written beside it (listed in the closing summary): each ellipsoid is centred on
    ``affine @ (x, y, z, 1)`` of the voxel centre the state holds, so its centre in recon.nii.gz's voxel frame is
    that voxel position (it overlays recon.nii.gz as the zero-shot ellipsoids overlay their scan), every vertex at
    the half-maximum Mahalanobis distance under ``M Sigma M^T`` of the state's covariance (built with SciPy),
    carrying the .ply's intensity, marked RAS."""
    from ellipsoid_helpers import covariance, mahalanobis, per_gaussian, read_vtk_polydata
    from medgmae.gaussians import covariance_matrices
    from medgmae.ply import load_ply
    from scipy.spatial.transform import Rotation

    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", [20.0, -15.0, 35.0], degrees=True).as_matrix() @ np.diag([12.0, 10.0, 16.0])
    affine[:3, 3] = [-40.0, 25.0, 7.5]
    ph = generate_phantom(1, shape=(16, 16, 12), spacing=(12.0, 10.0, 16.0), noise=False)
    nib.save(nib.Nifti1Image(ph.image.astype(np.float32), affine), str(tmp_path / "ct.nii.gz"))
    assert main(["simulate", "--volume", str(tmp_path / "ct.nii.gz"), "--geometry", "parallel", "--views", "8",
                 "--out", str(tmp_path / "scan"), "--device", "cpu"]) == 0  # fmt: skip
    out = tmp_path / "rec"
    capsys.readouterr()
    assert main([*few_gaussians_args(tmp_path / "scan", out), "--checkpoint-every", "0"]) == 0
    assert f"  {out / 'ellipsoids.vtk'}  (the same Gaussians as ellipsoids at half maximum" in capsys.readouterr().out
    state = torch.load(out / "recon_state.pt", weights_only=True)["params"]
    m = affine[:3, :3][:, ::-1]  # the (z, y, x) columns
    # gaussians.ply
    zyx = state["means"].double().numpy()
    expected = zyx[:, ::-1] @ affine[:3, :3].T + affine[:3, 3]  # (x, y, z) index -> world
    g, meta = load_ply(out / "gaussians.ply")
    assert meta["frame"] == "world" and g.num_gaussians == len(zyx) and meta["cutoff"] == 3.0  # the run's cutoff
    written = nib.load(str(out / "recon.nii.gz"))
    assert meta["shape"] == written.shape == (16, 16, 12)
    np.testing.assert_allclose(meta["affine"], written.affine, atol=1e-6)
    np.testing.assert_allclose(meta["affine"], affine, atol=1e-5)
    np.testing.assert_allclose(g.means[0].double().numpy(), expected, atol=1e-3)
    quats = torch.nn.functional.normalize(state["quats"].double(), dim=-1)
    cov = covariance_matrices(state["log_scales"].double().exp(), quats).numpy()
    np.testing.assert_allclose(g.covariances()[0].double().numpy(), m @ cov @ m.T, rtol=1e-3, atol=1e-3)
    # ellipsoids.vtk
    xyz = zyx[:, ::-1]  # the state's (z, y, x) voxel centres in the NIfTI's order
    mesh = read_vtk_polydata(out / "ellipsoids.vtk")
    assert "SPACE=RAS" in mesh["title"]
    points, carried, _ = per_gaussian(mesh, len(xyz))
    index = (points.mean(1) - written.affine[:3, 3]) @ np.linalg.inv(written.affine[:3, :3]).T
    np.testing.assert_allclose(index, xyz, atol=1e-4)
    scales, quats = state["log_scales"].double().exp().numpy(), state["quats"].double().numpy()
    for i in range(len(xyz)):
        world_cov = m @ covariance(scales[i], quats[i]) @ m.T
        centre = affine[:3, :3] @ xyz[i] + affine[:3, 3]
        np.testing.assert_allclose(mahalanobis(points[i], centre, world_cov), np.sqrt(2 * np.log(2)), rtol=1e-3)
    np.testing.assert_allclose(carried, np.repeat(g.intensities[0].double().numpy()[:, None], points.shape[1], 1))


def test_above_the_mesh_limit_no_ellipsoids_vtk_and_the_summary_gives_the_command(scan, tmp_path, capsys, monkeypatch):
    """With more Gaussians than ``MESH_LIMIT`` (patched to 50, for 100 Gaussians) ``reconstruct`` writes no
    ``ellipsoids.vtk`` and removes the one an earlier run left in the folder; the closing summary lists only files
    that are there and says so in one line, whose command, run as the console script runs (a new process), writes the
    same file as ``save_ellipsoids`` of the Gaussians read back from ``gaussians.ply`` (the independent VTK reader,
    and byte for byte)."""
    import os
    import re
    import shlex
    import subprocess
    import sys
    from pathlib import Path

    from ellipsoid_helpers import read_vtk_polydata
    from medgmae import ellipsoids
    from medgmae.ply import load_ply

    out = tmp_path / "rec 1"
    out.mkdir()
    (out / "ellipsoids.vtk").write_bytes(b"an earlier run's ellipsoids")
    monkeypatch.setattr(ellipsoids, "MESH_LIMIT", 50)
    capsys.readouterr()
    assert main([*few_gaussians_args(scan, out), "--checkpoint-every", "0"]) == 0
    text = capsys.readouterr().out
    assert not (out / "ellipsoids.vtk").exists() and (out / "gaussians.ply").is_file()
    listed = re.findall(rf"^  {re.escape(str(out))}/(\S+)  \(", text, flags=re.M)
    assert "gaussians.ply" in listed and "ellipsoids.vtk" not in listed and all((out / n).exists() for n in listed)
    said = [line for line in text.splitlines() if "ellipsoids" in line]
    assert len(said) == 1 and said[0].startswith("  ellipsoids.vtk not written: 100 Gaussians, more than the 50 "), text
    command = shlex.split(said[0].split("write it with: ", 1)[1])
    assert command[0] == "medgmae-ellipsoids" and command[1:] == [str(out / "gaussians.ply"), "--out", str(out / "ellipsoids.vtk")]
    root = Path(__file__).resolve().parents[1]
    script = "import sys\nfrom medgmae import launch\nsys.argv[0] = 'medgmae-ellipsoids'\nsys.exit(launch.ellipsoids())"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", script, *command[1:]], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0 and run.stdout.startswith(f"wrote {out / 'ellipsoids.vtk'}: 100 Gaussians (world frame)"), run
    expected = ellipsoids.save_ellipsoids(tmp_path / "expected.vtk", load_ply(out / "gaussians.ply")[0])
    mesh, reference = read_vtk_polydata(out / "ellipsoids.vtk"), read_vtk_polydata(expected)
    assert mesh["title"] == reference["title"] and len(mesh["points"]) == 100 * 162
    np.testing.assert_array_equal(mesh["points"], reference["points"])
    np.testing.assert_array_equal(np.array(mesh["polygons"]), np.array(reference["polygons"]))
    np.testing.assert_array_equal(mesh["scalars"]["intensity"], reference["scalars"]["intensity"])
    assert (out / "ellipsoids.vtk").read_bytes() == expected.read_bytes()


@pytest.mark.parametrize("limit", [50, None])  # above the limit (no mesh written), and within it
def test_an_earlier_runs_mesh_is_never_beside_this_runs_outputs(scan, tmp_path, monkeypatch, limit):
    """An earlier run's ``ellipsoids.vtk`` was removed after this run's outputs had moved in (above the limit) or
    replaced after ``curve.png`` (within it): a stop in between left it beside new Gaussians, as their mesh; files
    moved in name order, so the new mesh could stand beside the earlier ``gaussians.ply``, and the earlier
    ``metrics.json`` beside new outputs. Every file replacement of the run is watched: at none of them is the earlier
    mesh or record beside one of this run's outputs, nor this run's mesh beside the earlier Gaussians, and once this
    run's ``metrics.json`` is there every output is this run's."""
    import os

    from medgmae import ellipsoids

    out = tmp_path / "rec"
    out.mkdir()
    names = ["recon.nii.gz", "gaussians.ply", "ellipsoids.vtk", "metrics.json", "curve.png", "slices.png"]
    earlier = {name: f"the earlier run's {name}".encode() for name in names}
    for name, content in earlier.items():
        (out / name).write_bytes(content)
    if limit is not None:
        monkeypatch.setattr(ellipsoids, "MESH_LIMIT", limit)
    seen, replace = [], os.replace

    def state() -> tuple[list[str], list[str]]:
        """Which of the earlier run's files are there, and which of this run's."""
        there = [n for n in names if (out / n).is_file()]
        return [n for n in there if (out / n).read_bytes() == earlier[n]], [n for n in there if (out / n).read_bytes() != earlier[n]]

    def watched(src, dst, *args, **kwargs):  # a stop can fall before each replacement or after it
        seen.append(state())
        replace(src, dst, *args, **kwargs)
        seen.append(state())

    monkeypatch.setattr(os, "replace", watched)
    assert main([*few_gaussians_args(scan, out), "--checkpoint-every", "0"]) == 0
    seen.append(state())
    written = sorted(n for n in names if n != "ellipsoids.vtk" or limit is None)
    assert [(old, new) for old, new in seen if new and ("ellipsoids.vtk" in old or "metrics.json" in old)] == []
    assert [(old, new) for old, new in seen if "ellipsoids.vtk" in new and "gaussians.ply" in old] == []
    assert [(old, new) for old, new in seen if "metrics.json" in new and sorted(new) != written] == []
    assert any(new for _, new in seen) and sorted(seen[-1][1]) == written and seen[-1][0] == []


def test_sparse_note_names_what_limits_a_grown_start(tmp_path, capsys):
    """With --init medgmae the sparse start grows until density control ends (densify_until): when it stopped
    below its budget the note says so and asks for more iterations, not a larger --num-gaussians."""
    from recon.reconstruct_summary import print_summary

    base = {"preset": "toolkit", "init": "medgmae", "iterations": 20, "time_seconds": 1.0, "init_seconds": 0.1,
            "voxels_per_gaussian": 115.0, "settings": {"densify_until": 12, "iterations": 20}}  # fmt: skip
    print_summary({**base, "num_gaussians": 900, "init_settings": {"init": "medgmae", "grow_to": 20000}}, tmp_path)
    text = capsys.readouterr().out
    assert "grew to at most 900 of its budget of 20000: density control ran no round, and rounds run until iteration 12" in text
    assert "raise --iterations (growth runs to 60% of them)" in text and "raise --num-gaussians" not in text
    one = {**base, "iterations": 1, "settings": {"densify_until": 0, "iterations": 1}}  # too short for any round
    print_summary({**one, "num_gaussians": 900, "init_settings": {"init": "medgmae", "grow_to": 20000}}, tmp_path)
    text = capsys.readouterr().out
    assert "rounds run until iteration 0; raise --iterations, or start" in text and "0%" not in text, text
    print_summary({**base, "num_gaussians": 20000, "init_settings": {"init": "medgmae", "grow_to": 20000}}, tmp_path)
    assert "raise --num-gaussians" in capsys.readouterr().out  # the budget was reached: it is the limit
    # --max-gaussians 2000 capped the growth (the run's max_gaussians setting; grow_to keeps --num-gaussians): it was
    # the limit, not the iterations
    capped = {**base, "settings": {**base["settings"], "max_gaussians": 2000}}
    print_summary({**capped, "num_gaussians": 2000, "init_settings": {"init": "medgmae", "grow_to": 20000}}, tmp_path)
    text = capsys.readouterr().out
    assert "raise --max-gaussians (its 2000 capped the sparse start's budget of 20000)" in text
    assert "raise --iterations" not in text, text
    print_summary({**capped, "num_gaussians": 900, "init_settings": {"init": "medgmae", "grow_to": 20000}}, tmp_path)
    assert ("grew to at most 900 of its budget of 2000 (--max-gaussians; --num-gaussians asked 20000)"
            in capsys.readouterr().out)
    # the held-out choice wrote an earlier iteration's Gaussians: the growth is the rounds' largest count
    rounds = [{"iteration": 5, "cloned": 3, "split": 0, "pruned": 0, "num_gaussians": 5},
              {"iteration": 10, "cloned": 0, "split": 0, "pruned": 1, "num_gaussians": 4}]  # fmt: skip
    print_summary({**base, "num_gaussians": 2, "density_rounds": rounds,
                   "init_settings": {"init": "medgmae", "grow_to": 1500}}, tmp_path)  # fmt: skip
    assert ("grew to at most 5 (the 2 written are those of the held-out choice) of its budget of 1500: its last "
            "density-control round was at iteration 10, and rounds run until iteration 12") in capsys.readouterr().out
    # resumed with a shorter --iterations: the last round (20) was on the earlier run's longer schedule, past this
    # run's end of rounds (12), and the note says so rather than reading as a contradiction
    rounds[-1]["iteration"] = 20
    print_summary({**base, "num_gaussians": 4, "density_rounds": rounds, "resumed": {"iteration": 20, "seconds_before": 1.0},
                   "init_settings": {"init": "medgmae", "grow_to": 1500}}, tmp_path)  # fmt: skip
    text = " ".join(capsys.readouterr().out.split())
    assert ("its last density-control round, at iteration 20, came from the longer --iterations of the run it resumed, "
            "and this run's --iterations 20 end rounds at iteration 12") in text, text
    assert "and rounds run until" not in text
    print_summary({**base, "num_gaussians": 4, "density_rounds": rounds, "init_settings": {"init": "medgmae", "grow_to": 1500}},
                  tmp_path)  # not resumed (no run writes this; the wording then claims no earlier run)  # fmt: skip
    assert "run it resumed" not in capsys.readouterr().out
    # the curve's points: a run shorter than --eval-every has one, at its last iteration
    from recon.reconstruct_summary import outputs

    assert outputs({"settings": {"eval_every": 50}, "iterations": 2})["curve.png"] == "loss at the last iteration only"
    assert outputs({"settings": {"eval_every": 5}, "iterations": 20})["curve.png"] == "loss every 5 iterations and at the last"
    # --init fbp placed fewer than asked (one per voxel above 5 % of the maximum): no advice to raise the budget
    print_summary({**base, "init": "fbp", "num_gaussians": 351, "initial_gaussians": 351,
                   "init_settings": {"init": "fbp", "num_gaussians": 1500}}, tmp_path)  # fmt: skip
    text = capsys.readouterr().out
    assert "--init fbp placed one Gaussian per voxel above 5 % of the FBP's maximum" in text and "raise --num-gaussians" not in text
    # --init 3dgr-ct: its cap and its pruning, not the budget, limit it (a run ended with 361 of 4896 Gaussians)
    print_summary({**base, "init": "3dgr-ct", "num_gaussians": 361, "initial_gaussians": 4896,
                   "init_settings": {"init": "3dgr-ct", "num_gaussians": 50000}}, tmp_path)  # fmt: skip
    text = capsys.readouterr().out
    assert "--init 3dgr-ct places at most one Gaussian per voxel of its half-resolution grid" in text
    assert "raise --num-gaussians" not in text


def test_the_gaussian_budget_is_bounded_by_the_volume_or_the_presets_default(scan, tmp_path, capsys, monkeypatch):
    """--num-gaussians over 8 per voxel (24,576 for this 3,072-voxel scan) is refused naming the bound, nothing
    written; a start's own default is never refused (3DGR-CT's 50,000 here, by preset or by --init); a run started before the bound
    existed resumes with its budget."""
    import recon.reconstruct_start as start

    expect_refusal(capsys, few_gaussians_args(scan, tmp_path / "rec", "--num-gaussians", "24577"),
                   "--num-gaussians 24577: more than 8 per voxel of the 3,072-voxel volume (24,576); "
                   "--init fbp's default here is 20,000")  # fmt: skip
    assert not (tmp_path / "rec").exists()
    assert main(few_gaussians_args(scan, tmp_path / "rec", "--preset", "3dgr-ct", "--num-gaussians", "50000")) == 0
    assert main(few_gaussians_args(scan, tmp_path / "rec2", "--init", "3dgr-ct", "--num-gaussians", "50000")) == 0
    monkeypatch.setattr(start, "MAX_GAUSSIANS_PER_VOXEL", 100)  # as before the bound: 100,000 taken
    assert main(few_gaussians_args(scan, tmp_path / "old", "--num-gaussians", "100000")) == 0
    monkeypatch.undo()
    resumed = few_gaussians_args(scan, tmp_path / "old", "--num-gaussians", "100000", "--iterations", "4", "--resume")
    assert main(resumed) == 0


def test_a_start_with_fewer_gaussians_than_asked_is_warned(scan, tmp_path, capsys):
    """--init fbp places at most one Gaussian per voxel above 5 % of the FBP's maximum: asked for more than the
    scan's voxels, it says how many it placed and why; a zero-shot start that kept almost none is warned too."""
    from recon.reconstruct_start import _warn_if_few
    from medgmae.preprocessing import PreprocessingSpec

    capsys.readouterr()
    args = few_gaussians_args(scan, tmp_path / "rec")
    args[args.index("--num-gaussians") + 1] = "20000"  # the scan has 16 x 16 x 12 = 3,072 voxels
    assert main(args) == 0
    out = capsys.readouterr().out
    placed = json.loads((tmp_path / "rec" / "metrics.json").read_text(encoding="utf-8"))["initial_gaussians"]
    assert placed < 16 * 16 * 12 and f"warning: --init fbp placed {placed} of 20000 Gaussians: only {placed} voxels" in out
    spec = PreprocessingSpec(spacing=(1.5, 1.5, 2.0))
    for count, budget, warned, noted in ((1, 1500, True, False), (31, None, True, False), (40, 10000, False, True),
                                         (756, 286720, False, True), (40, 1500, False, False), (100, None, False, False)):
        _warn_if_few(count, budget, spec, 256)
        text = capsys.readouterr().out
        assert (f"warning: the zero-shot start kept only {count} Gaussian" in text) == warned, (count, budget, text)
        assert not warned or "resampled to 1.5x1.5x2 mm" in text
        # a sparse start of a scan larger than the window: the model's queries, not the scan, are the reason
        assert (f"note: the zero-shot start has {count} Gaussians (the model decodes 256 per window), under 1 % of the "
                f"budget of {budget}" in text) == noted, (count, budget, text)
        assert not noted or "much smaller than its input window" not in text


def test_summary_times_name_the_projector_and_the_held_out_run_before_a_refit(tmp_path, capsys):
    """The closing line counts every pass: the projector built (named), the FBP and start, and after --refit the
    held-out run whose chosen iteration the refit stopped at."""
    from recon.reconstruct_summary import print_summary

    holdout = {"views": [2, 7], "best_error": 0.1, "best_iteration": 8, "stopped_early": True, "refit": True,
               "run_iterations": 14, "run_seconds": 12.25, "errors": [(8, 0.1)]}  # fmt: skip
    metrics = {"preset": "toolkit", "init": "fbp", "iterations": 8, "time_seconds": 7.0, "init_seconds": 0.5,
               "projector": "astra", "projector_seconds": 1.5, "num_gaussians": 100, "holdout": holdout,
               "settings": {"eval_every": 2}}  # fmt: skip
    print_summary(metrics, tmp_path)
    first = capsys.readouterr().out.splitlines()[0]
    assert ("8 iterations in 7.0 s (+1.5 s setting up the astra projector, 0.5 s FBP and initialisation, 12.2 s the "
            "held-out run before the refit (14 iterations)), 100 Gaussians") in first
    print_summary({**metrics, "holdout": {**holdout, "refit": False}}, tmp_path)
    assert "held-out run before" not in capsys.readouterr().out.splitlines()[0]
    # the record of a refit: the held-out run's start (its FBP) in the holdout record, the refit's own at the top
    print_summary({**metrics, "init_seconds": 0.25, "holdout": {**holdout, "init_seconds": 0.5}}, tmp_path)
    assert ("0.5 s FBP and initialisation, 12.2 s the held-out run before the refit (14 iterations), 0.2 s the refit's "
            "start)") in capsys.readouterr().out.splitlines()[0]


def test_a_model_without_recorded_preprocessing_is_named_in_a_warning(caplog):
    """The zero-shot start reads the model's pre-processing from its file; a file without one (an early version, a
    model rebuilt by hand) gets the toolkit's default, with the one warning every consumer gives
    (``medgmae.preprocessing.model_preprocessing``), naming the file; a recorded spec is used without a word."""
    import logging
    from types import SimpleNamespace

    from medgmae.preprocessing import DEFAULT_SPEC, PreprocessingSpec
    from recon.reconstruct_start import _model_spec

    recorded = PreprocessingSpec(spacing=2.0, hu_window=(-200.0, 300.0))
    with caplog.at_level(logging.WARNING, logger="medgmae"):
        assert _model_spec(SimpleNamespace(preprocessing=recorded), None, "/m/model.pt") == recorded
        assert not caplog.records
        assert _model_spec(SimpleNamespace(preprocessing=None), None, "/m/old.pt") == DEFAULT_SPEC
    assert [r.getMessage() for r in caplog.records][0].startswith(
        "/m/old.pt records no pre-processing: the model sees the scan as the toolkit's default RAS, 1.5x1.5x1.5 mm "
        "voxels, HU window [-175.0, 250.0]")  # fmt: skip
    assert "or use --model-spacing for the spacing" in caplog.records[0].getMessage()
    assert len(caplog.records) == 1


def test_the_zero_shot_start_says_its_preprocessing_and_where_each_part_came_from(capsys):
    """One line, worded as fine-tuning's, names the pre-processing --init medgmae prepares the scan with: the model's
    recorded spec, --model-spacing where given, the default where the model records none; the record says the same."""
    from types import SimpleNamespace

    from medgmae.preprocessing import PreprocessingSpec
    from recon.reconstruct_start import model_start_spec

    model = SimpleNamespace(preprocessing=PreprocessingSpec(spacing=2.0, hu_window=(-200.0, 300.0), input_size=48, patch_size=12))
    spec, record = model_start_spec(model, 3.0, "/m/model.pt")
    assert capsys.readouterr().out == ("--init medgmae pre-processing: orientation RAS (recorded in /m/model.pt), spacing "
                                       "[3.0, 3.0, 3.0] mm (given by --model-spacing), HU window [-200.0, 300.0] (recorded "
                                       "in /m/model.pt), window 48x48x48\n")  # fmt: skip
    assert record == {**spec.to_dict(), "from": {"orientation": "recorded in /m/model.pt", "spacing": "given by --model-spacing",
                                                 "hu_window": "recorded in /m/model.pt"}}  # fmt: skip
    assert model_start_spec(model, [1.0, 2.0, 3.0], "/m/model.pt")[0].spacing == (1.0, 2.0, 3.0)  # three, as --pixdim
    assert "spacing [1.0, 2.0, 3.0] mm (given by --model-spacing)" in capsys.readouterr().out
    model_start_spec(SimpleNamespace(preprocessing=None), None, "/m/old.pt")
    assert "orientation RAS (default), spacing [1.5, 1.5, 1.5] mm (default)" in capsys.readouterr().out


def test_a_geometry_without_affine_takes_the_world_frame_of_the_volumes_given(scan, tmp_path, capsys):
    """A geometry.json without an affine (hand-written, or from RTK's XML) beside an --fbp or --reference NIfTI
    placed in the world: recon.nii.gz and gaussians.ply take that volume's affine, so they overlay it in a viewer
    (before, they sat in the geometry's centred default frame, the scan's own affine 100s of mm away); an --fbp
    and a --reference on different grids are refused."""
    from medgmae.ply import load_ply

    geometry = json.loads((scan / "geometry.json").read_text())
    placed = np.asarray(geometry.pop("affine"), float)
    assert np.abs(placed[:3, 3]).max() > 50  # the phantom's affine is far from a centred frame
    (tmp_path / "geometry.json").write_text(json.dumps(geometry))
    args = ["--geometry", str(tmp_path / "geometry.json"), "--num-gaussians", "50", "--iterations", "1"]
    for flag, volume in (("--fbp", scan / "fbp.nii.gz"), ("--reference", scan / "reference.nii.gz")):
        out = tmp_path / flag.strip("-")
        assert main(few_gaussians_args(scan, out, *args, flag, str(volume))) == 0
        assert "has no affine: recon.nii.gz and gaussians.ply take that of" in capsys.readouterr().out
        np.testing.assert_allclose(nib.load(str(out / "recon.nii.gz")).affine, placed, atol=1e-4)
        gaussians, meta = load_ply(out / "gaussians.ply")
        np.testing.assert_allclose(meta["affine"], placed, atol=1e-4)
        ijk = np.linalg.solve(placed, np.c_[gaussians.means[0].numpy(), np.ones(50)].T)[:3].T
        assert (ijk > -1).all() and (ijk < np.asarray(nib.load(str(out / "recon.nii.gz")).shape)).all()
    shifted_affine = placed.copy()
    shifted_affine[0, 3] += 50.0
    ref = nib.load(str(scan / "reference.nii.gz"))
    nib.save(nib.Nifti1Image(np.asarray(ref.dataobj, np.float32), shifted_affine), str(tmp_path / "shifted.nii.gz"))
    expect_refusal(capsys, few_gaussians_args(scan, tmp_path / "bad", *args, "--fbp", str(scan / "fbp.nii.gz"), "--reference",
                   str(tmp_path / "shifted.nii.gz")), "is not on the voxel grid of --fbp")  # fmt: skip
    assert not (tmp_path / "bad").exists()
    # a reference saved with NIfTI's identity affine (from numpy, no frame): its shape fits, its frame does not, so
    # the run goes on in the centred frame, with a note (it was accepted before the placement, and still is)
    nib.save(nib.Nifti1Image(np.asarray(ref.dataobj, np.float32), np.eye(4)), str(tmp_path / "plain.nii.gz"))
    out = tmp_path / "plain"
    assert main(few_gaussians_args(scan, out, *args, "--reference", str(tmp_path / "plain.nii.gz"))) == 0
    assert "does not fit it (" in capsys.readouterr().out
    centred = CTGeometry.from_dict(geometry).default_affine()
    np.testing.assert_allclose(nib.load(str(out / "recon.nii.gz")).affine, centred, atol=1e-4)
