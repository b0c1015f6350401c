"""``medgmae-recon`` runs: slices drawn to scale, held-out views and refits, the default budget, the 3DGR-CT preset's
start, the auto backend's choice, the start at iteration 0 and FBP outputs (projection stacks in files and their
errors: test_recon_cli_stacks.py)."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex

import nibabel as nib
import numpy as np
import pytest
import torch

from medgmae.data.phantom import generate_phantom
from recon.cli import main
from recon.geometry import CTGeometry
from recon.metrics import evaluate

from recon_cli_helpers import ct, model_file, reconstruct_args, simulated  # noqa: F401 - ct, simulated and model_file are fixtures

pytestmark = pytest.mark.usefixtures("one_thread")


def test_summary_says_when_the_gaussians_are_too_few(tmp_path, capsys):
    """The closing summary notes a budget of far fewer Gaussians than voxels, and only then."""
    from recon.reconstruct_summary import SPARSE_BUDGET, print_summary

    base = {"preset": "toolkit", "init": "fbp", "iterations": 3, "time_seconds": 1.0, "init_seconds": 0.1}
    for per, noted in ((115.0, True), (SPARSE_BUDGET, False), (7.0, False)):
        print_summary({**base, "num_gaussians": 20000, "voxels_per_gaussian": per}, tmp_path)
        text = capsys.readouterr().out
        assert ("too few" in text) == noted and (f"one Gaussian per {per:.0f} voxels" in text) == noted


def test_holdout_views_choose_the_iteration(simulated, tmp_path, capsys):
    """--holdout-views writes the Gaussians of the evaluation with the lowest held-out error, records the choice,
    draws the held-out error, and --patience ends the run early."""
    from PIL import Image

    out = tmp_path / "held out $1"  # the printed select line pastes into a shell as it is
    args = reconstruct_args(simulated, out, "--holdout-views", "2", "--patience", "1", "--iterations", "30", "--eval-every", "1",
                             "--num-gaussians", "300", "--reference", str(simulated / "reference.nii.gz"))  # fmt: skip
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    h = m["holdout"]
    errors = {r["iteration"]: r["holdout_error"] for r in m["history"]}
    assert h["views"] == [2, 7] and h["best_iteration"] == min(errors, key=errors.get)
    assert m["settings"]["holdout_views"] == 2 and m["settings"]["holdout_patience"] == 1
    assert m["iterations"] == (h["best_iteration"] + 1 if h["stopped_early"] else 30)
    rec = nib.load(str(out / "recon.nii.gz")).get_fdata()
    ref = nib.load(str(simulated / "reference.nii.gz")).get_fdata()
    assert m["final"]["psnr"] == pytest.approx(evaluate(rec, ref)["psnr"], abs=1e-3)
    text = capsys.readouterr().out
    select = next(line for line in text.splitlines() if "medgmae-recon select --runs" in line)
    assert "held-out views [2, 7]" in text and shlex.split(select.split("select ", 1)[1].rstrip(")"))[:2] == ["--runs", str(out)]
    assert Image.open(out / "curve.png").size == (640, 10 + 3 * 235)  # loss, held-out error, PSNR


def test_refit_is_the_every_view_run_stopped_at_the_chosen_iteration(ct, tmp_path):
    """On a noisy scan the held-out views stop the run early; --refit then writes the run on every view stopped at
    the chosen iteration: its history is, value for value, the start of a plain run's to the end, and it ends above
    that run, which fits the noise."""
    sim = tmp_path / "noisy"
    assert main(["simulate", "--volume", str(ct[0]), "--geometry", "parallel", "--views", "12", "--photons", "100",
                 "--out", str(sim), "--device", "cpu"]) == 0  # fmt: skip
    common = ["--iterations", "200", "--eval-every", "10", "--num-gaussians", "300", "--reference", str(sim / "reference.nii.gz")]
    assert main(reconstruct_args(sim, tmp_path / "refit", *common, "--holdout-views", "2", "--patience", "3", "--refit")) == 0
    assert main(reconstruct_args(sim, tmp_path / "plain", *common)) == 0
    refit, plain = (json.loads((tmp_path / d / "metrics.json").read_text(encoding="utf-8")) for d in ("refit", "plain"))
    h = refit["holdout"]
    assert h["refit"] and h["stopped_early"] and h["run_iterations"] == h["best_iteration"] + 30 < 200
    assert refit["iterations"] == refit["history"][-1]["iteration"] == h["best_iteration"]
    assert not any("holdout_error" in r for r in refit["history"])
    assert 0 < refit["init_seconds"] and 0 < h["init_seconds"]  # the refit's start and the held-out run's, each timed
    for a, b in zip(refit["history"], plain["history"]):
        assert (a["iteration"], a["num_gaussians"]) == (b["iteration"], b["num_gaussians"])
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6) and a["psnr"] == pytest.approx(b["psnr"], abs=1e-6)
    assert refit["final"]["psnr"] > plain["final"]["psnr"] + 0.5
    errors = dict(h["errors"])  # the held-out run's errors, drawn in curve.png beside the refit's loss and PSNR
    assert min(errors, key=errors.get) == h["best_iteration"] and max(errors) == h["run_iterations"]
    from PIL import Image

    assert Image.open(tmp_path / "refit" / "curve.png").size == (640, 10 + 3 * 235)
    before = nib.load(str(tmp_path / "refit" / "recon.nii.gz")).get_fdata()
    assert main(reconstruct_args(sim, tmp_path / "refit", *common, "--holdout-views", "2", "--patience", "3", "--refit", "--resume")) == 0
    again = json.loads((tmp_path / "refit" / "metrics.json").read_text(encoding="utf-8"))  # the stopped run resumes to nothing more
    assert again["holdout"]["run_iterations"] == h["run_iterations"] and again["holdout"]["best_iteration"] == h["best_iteration"]
    np.testing.assert_array_equal(nib.load(str(tmp_path / "refit" / "recon.nii.gz")).get_fdata(), before)


@pytest.mark.parametrize("extra", [("--preset", "3dgr-ct"), ("--init", "medgmae")])
def test_holdout_and_refit_with_every_start(simulated, model_file, tmp_path, extra):
    """Held-out views and --refit work with 3DGR-CT's preset (sigmoid intensities in units of the FBP's maximum)
    and the zero-shot start (decoded again from the every-view FBP for the refit)."""
    args = [*extra, "--checkpoint", str(model_file[0])] if "medgmae" in extra else list(extra)
    out = tmp_path / "run"
    assert main(reconstruct_args(simulated, out, *args, "--iterations", "4", "--eval-every", "2", "--num-gaussians", "200",
                                  "--holdout-views", "2", "--refit")) == 0  # fmt: skip
    m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert m["holdout"]["refit"] and m["init"] == ("medgmae" if "medgmae" in extra else "3dgr-ct")
    assert m["iterations"] == m["holdout"]["best_iteration"] and m["settings"]["holdout_views"] == 2
    assert np.isfinite(nib.load(str(out / "recon.nii.gz")).get_fdata()).all()


def test_default_budget_scales_with_the_volume(tmp_path):
    """Without --num-gaussians the toolkit start has one Gaussian per 8 voxels (at least 20,000) and density control
    may grow it tenfold; a given --num-gaussians is used as it is, under the preset's cap of 200,000."""
    ph = generate_phantom(3, shape=(64, 64, 48), spacing=(4.0, 4.0, 5.0), noise=False)  # 196,608 voxels
    vol = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(ph.image.astype(np.float32), ph.affine), str(vol))
    scan = tmp_path / "scan"
    assert main(["simulate", "--volume", str(vol), "--geometry", "parallel", "--views", "4", "--out", str(scan), "--device", "cpu"]) == 0
    for extra, k, cap in (([], 24576, 245760), (["--num-gaussians", "500"], 500, 200000)):
        out = tmp_path / f"rec{k}"
        argv = ["reconstruct", "--projections", str(scan / "projections.npy"), "--geometry", str(scan / "geometry.json"),
                "--fbp", str(scan / "fbp.nii.gz"), "--iterations", "1", "--no-progress", "--device", "cpu", "--out", str(out), *extra]  # fmt: skip
        assert main(argv) == 0
        m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
        assert m["initial_gaussians"] == k and m["init_settings"]["num_gaussians"] == k and m["settings"]["max_gaussians"] == cap


def test_3dgr_start_under_the_toolkit_preset_gets_the_toolkit_gain():
    """``--init 3dgr-ct`` keeps 3DGR-CT's intensities (0.25 x the normalised FBP + 0.001, sigmoid units of the
    FBP's maximum) under its own preset; under the toolkit preset the same Gaussians get the least-squares gain
    against the FBP that every toolkit start gets (gain of the rendered start against the FBP, in float64: 1)."""
    from types import SimpleNamespace

    from medgmae.render import render_volume
    from recon.presets import preset_init_settings
    from recon.reconstruct_start import initialise as _initialise

    z, y, x = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in (12, 20, 24)), indexing="ij")
    fbp_t = 0.02 * torch.exp(-(((z - 6) / 4) ** 2 + ((y - 9) / 6) ** 2 + ((x - 13) / 7) ** 2)) + 0.01 * (x > 15)
    settings = {**preset_init_settings("3dgr-ct"), "num_gaussians": 60}
    own, scale = _initialise(SimpleNamespace(preset="3dgr-ct", seed=0), settings, fbp_t, np.eye(4), None)
    assert scale == pytest.approx(float(fbp_t.max()))
    assert own.num_gaussians == 60 and float((own.intensities / scale).max()) <= 0.251 + 1e-6
    toolkit, unit = _initialise(SimpleNamespace(preset="toolkit", seed=0), settings, fbp_t, np.eye(4), None)
    assert unit is None and torch.equal(toolkit.means, own.means) and torch.equal(toolkit.scales, own.scales)
    r = render_volume(*toolkit.tensors(), shape=fbp_t.shape, cutoff=3.0)[0].double()
    gain = float((r * fbp_t.double()).sum() / r.square().sum())
    assert gain == pytest.approx(1.0, abs=1e-4)
    ratio = toolkit.intensities / own.intensities  # one common gain, not a per-Gaussian fit
    assert float(ratio.max() - ratio.min()) < 1e-4 * float(ratio.mean()) and float(ratio.mean()) > 1.5


def test_3dgr_ct_preset_subdivides_the_zero_shot_start_to_num_gaussians(simulated, model_file, tmp_path, capsys):
    """3DGR-CT's density control does not grow to a budget, so under its preset ``--num-gaussians N`` splits each of
    the decoder's K Gaussians into floor(N / K) (:func:`recon.initialisation.subdivide_gaussians`); without it the
    start keeps the K decoded, and the closing note's advice to raise --num-gaussians says what that does."""
    from recon.reconstruct_summary import print_summary

    common = ["--preset", "3dgr-ct", "--init", "medgmae", "--checkpoint", str(model_file[0]), "--iterations", "1"]
    assert main(reconstruct_args(simulated, tmp_path / "decoded", *common)) == 0
    k = json.loads((tmp_path / "decoded" / "metrics.json").read_text(encoding="utf-8"))["initial_gaussians"]
    capsys.readouterr()
    budget = 7 * k + 3
    assert main(reconstruct_args(simulated, tmp_path / "budget", *common, "--num-gaussians", str(budget))) == 0
    printed = capsys.readouterr().out
    m = json.loads((tmp_path / "budget" / "metrics.json").read_text(encoding="utf-8"))
    assert m["initial_gaussians"] == 7 * k and m["init_settings"]["num_gaussians"] == budget
    assert f"zero-shot start: {7 * k} Gaussians, the decoder's subdivided toward --num-gaussians {budget}" in printed
    print_summary({**m, "voxels_per_gaussian": 100.0}, tmp_path)
    assert "raise --num-gaussians (the decoder's Gaussians are subdivided to it;" in capsys.readouterr().out


@pytest.mark.astra
def test_auto_says_why_it_left_astra(tmp_path, capsys, caplog):
    """Parallel beam over oblong in-plane voxels: 'auto' projects with PyTorch (ASTRA's 2D geometry has one pixel
    size) and says why, once (the note make_projector logs, as from Python), and that it is slower; the run
    completes."""
    from recon.projectors import TorchProjector

    geom = CTGeometry.parallel((6, 10, 8), (2.5, 1.2, 1.5), num_angles=8)
    zz, yy, xx = np.mgrid[:6, :10, :8]
    ball = (((zz - 2.5) / 3) ** 2 + ((yy - 4.5) / 4) ** 2 + ((xx - 3.5) / 3) ** 2 < 1).astype(np.float32) * 0.02
    scan = tmp_path / "scan"
    scan.mkdir()
    np.save(scan / "projections.npy", TorchProjector(geom)(torch.from_numpy(ball)).numpy())
    geom.save(scan / "geometry.json")
    with caplog.at_level(logging.WARNING, logger="recon"):
        assert main(reconstruct_args(scan, tmp_path / "rec", "--num-gaussians", "50", "--init", "random")) == 0
    captured = capsys.readouterr()
    assert "torch backend: PyTorch ray marcher, chosen by --backend auto" in captured.out
    said = "ASTRA's CPU projectors cannot take this scan (it needs square in-plane voxels, not 1.2 x 1.5 mm)"
    assert [said in r.getMessage() for r in caplog.records].count(True) == 1, caplog.text
    assert said not in captured.err  # not printed besides


def test_auto_says_why_a_cone_beam_runs_the_ray_marcher(tmp_path, capsys, caplog, monkeypatch):
    """A cone beam whose sparse matrix is over the budget of ``--backend auto`` runs the PyTorch ray marcher on the
    CPU, and the run says why, with the matrix's size and the budget (it said nothing: a run of hours unexplained).
    The bound is evaluated once for the choice and the note (it was evaluated twice, seconds each on a large scan)."""
    from recon.projectors import TorchProjector, estimate_matrix_bytes, ray_matrix

    geom = CTGeometry.cone((6, 8, 8), (2.0, 2.0, 2.0), num_angles=8, source_origin=200.0, source_detector=300.0)
    monkeypatch.setattr(ray_matrix, "MATRIX_BUDGET_BYTES", estimate_matrix_bytes(geom, 0.5) - 1)
    evaluations, bound = [], ray_matrix._matrix_bytes_bound
    monkeypatch.setattr(ray_matrix, "_matrix_bytes_bound", lambda *a: evaluations.append(1) or bound(*a))
    ray_matrix._LAST_ESTIMATE.clear()
    scan = tmp_path / "scan"
    scan.mkdir()
    np.save(scan / "projections.npy", TorchProjector(geom)(torch.full((6, 8, 8), 0.02)).numpy())
    geom.save(scan / "geometry.json")
    with caplog.at_level(logging.WARNING, logger="recon"):
        assert main(reconstruct_args(scan, tmp_path / "rec", "--num-gaussians", "30", "--init", "random")) == 0
    captured = capsys.readouterr()
    assert "torch backend: PyTorch ray marcher, chosen by --backend auto" in captured.out
    assert len(evaluations) == 1
    said = [r.getMessage() for r in caplog.records if "this cone beam's sparse matrix would take up to " in r.getMessage()]
    assert len(said) == 1, caplog.text
    # both sizes in binary units, as memory is counted, to three digits (they said "0.00 GiB" of a small scan's)
    unit = r"([\d.,]+) (bytes|KiB|MiB|GiB)"
    sizes = re.search(rf"would take up to {unit}, over the {unit} that backend 'auto' builds", said[0])
    scale = {"bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
    need = estimate_matrix_bytes(geom, 0.5)
    for number, name, expected in ((sizes[1], sizes[2], need), (sizes[3], sizes[4], need - 1)):
        assert float(number.replace(",", "")) * scale[name] == pytest.approx(expected, rel=0.005), said[0]


def test_the_start_is_evaluated_at_iteration_0(simulated, tmp_path, capsys):
    """metrics.json's ``start``: the initial Gaussians' PSNR / SSIM against the reference (the PSNR curve's point at
    iteration 0, a line of the summary), equal to a float64 dense evaluation of ``fbp_init``'s Gaussians; a resumed
    run records the same start."""
    from medgmae.render._reference import render_volume_reference
    from recon.initialisation import fbp_init

    out = tmp_path / "rec"
    args = ["reconstruct", "--projections", str(simulated / "projections.npy"), "--geometry", str(simulated / "geometry.json"),
            "--fbp", str(simulated / "fbp.nii.gz"), "--init", "fbp", "--num-gaussians", "150", "--iterations", "6",
            "--eval-every", "3", "--reference", str(simulated / "reference.nii.gz"), "--out", str(out), "--no-progress",
            "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    fbp_vol = torch.from_numpy(nib.load(str(simulated / "fbp.nii.gz")).get_fdata().transpose(2, 1, 0).astype(np.float32))
    g = fbp_init(fbp_vol, 150, seed=0).to(torch.float64)
    start, _ = render_volume_reference(g.means, g.scales, g.quats, g.intensities, fbp_vol.shape)
    ref = nib.load(str(simulated / "reference.nii.gz")).get_fdata()
    expected = evaluate(start[0].numpy().transpose(2, 1, 0), ref)
    assert metrics["start"]["psnr"] == pytest.approx(expected["psnr"], abs=0.02)
    assert metrics["start"]["ssim"] == pytest.approx(expected["ssim"], abs=2e-3)
    assert metrics["start"]["psnr"] != pytest.approx(metrics["final"]["psnr"], abs=1e-3)
    printed = capsys.readouterr().out
    assert f"  start      PSNR {metrics['start']['psnr']:.2f} dB" in printed
    assert "PSNR (from the start's, at iteration 0)" in printed
    longer = [("8" if i == args.index("--iterations") + 1 else a) for i, a in enumerate(args)]
    assert main([*longer, "--resume"]) == 0
    resumed = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert resumed["iterations"] == 8 and resumed["start"] == metrics["start"]


def test_fbp_names_a_file_it_replaces_and_refuses_to_replace_its_input(simulated, tmp_path, capsys):
    """``fbp --out`` over an earlier file says it replaced it; over the NIfTI projection stack it reads, it is
    refused (exit 2) and the stack stays as it was."""
    proj = np.load(simulated / "projections.npy")
    stack = tmp_path / "proj.nii.gz"
    nib.save(nib.Nifti1Image(proj.transpose(2, 1, 0), np.eye(4)), str(stack))
    geometry = str(simulated / "geometry.json")
    out = tmp_path / "fbp.nii.gz"
    for replaced in (False, True):
        assert main(["fbp", "--projections", str(stack), "--geometry", geometry, "--out", str(out), "--device", "cpu"]) == 0
        assert ("it replaced the file of that name" in capsys.readouterr().out) == replaced
    before = stack.read_bytes()
    assert main(["fbp", "--projections", str(stack), "--geometry", geometry, "--out", str(tmp_path / "." / "proj.nii.gz")]) == 2
    assert "is the projection stack given as --projections" in capsys.readouterr().err and stack.read_bytes() == before
    os.link(stack, tmp_path / "linked.nii.gz")  # the same file under another name
    assert main(["fbp", "--projections", str(stack), "--geometry", geometry, "--out", str(tmp_path / "linked.nii.gz")]) == 2
    assert "is the projection stack given as --projections" in capsys.readouterr().err and stack.read_bytes() == before


def test_3dgr_start_of_sub_voxel_gaussians_is_warned_about(capsys):
    """On a volume of a few dozen voxels 3DGR-CT's initialisation takes nearly every half-resolution voxel and its
    widths (ini_sigma x side / neighbours) shrink to hundredths of a voxel, where the fit stalls (the loss did not
    move): a warning names the median width; a sparse start on a larger volume, Gaussians voxels wide, gets none."""
    from types import SimpleNamespace

    from recon.presets import preset_init_settings
    from recon.reconstruct_start import initialise as _initialise

    z, y, x = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in (24, 32, 32)), indexing="ij")
    fbp_t = 0.02 * (((y - 16) / 12) ** 2 + ((x - 16) / 14) ** 2 < 1) * (1 + 0.3 * torch.sin(x / 2) * torch.cos(y / 3))
    settings = preset_init_settings("3dgr-ct")  # 50,000 asked: the half grid has 12 x 16 x 16 = 3,072 voxels
    init, _ = _initialise(SimpleNamespace(preset="3dgr-ct", seed=0), settings, fbp_t, np.eye(4), None)
    out = capsys.readouterr().out
    widths = init.scales.reshape(-1, 3)[:, 0]
    assert float(widths.median()) < 0.1  # ini_sigma 0.15 x side 32 / about 100 neighbours
    assert f"placed {init.num_gaussians} of 50000 Gaussians" in out
    assert f"median width {float(widths.median()):.3g} voxels" in out and "the fit stalls" in out
    z, y, x = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in (48, 64, 64)), indexing="ij")
    big = 0.02 * (((y - 32) / 24) ** 2 + ((x - 32) / 28) ** 2 < 1) * (1 + 0.3 * torch.sin(x / 3) * torch.cos(y / 4))
    sparse, _ = _initialise(SimpleNamespace(preset="3dgr-ct", seed=0), {**settings, "num_gaussians": 300}, big, np.eye(4), None)
    assert float(sparse.scales.reshape(-1, 3)[:, 0].median()) > 0.5 and capsys.readouterr().out == ""
