"""``medgmae-recon select``: ranking reconstructions of one scan by held-out error, and every refusal (exit 2)."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medgmae.data.phantom import generate_phantom
from recon.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _simulate(tmp_path_factory, name: str, seed: int) -> object:
    d = tmp_path_factory.mktemp(name)
    ph = generate_phantom(seed, shape=(16, 16, 12), spacing=(12.0, 12.0, 16.0), noise=False)
    nib.save(nib.Nifti1Image(ph.image.astype(np.float32), ph.affine), str(d / "ct.nii.gz"))
    out = d / "scan"
    assert main(["simulate", "--volume", str(d / "ct.nii.gz"), "--geometry", "parallel", "--views", "12", "--photons", "1000",
                 "--out", str(out), "--device", "cpu"]) == 0  # fmt: skip
    return out


def _run(scan, out, *extra) -> None:
    args = ["reconstruct", "--projections", str(scan / "projections.npy"), "--geometry", str(scan / "geometry.json"),
            "--out", str(out), "--no-progress", "--device", "cpu", "--iterations", "40", "--eval-every", "10",
            "--num-gaussians", "300", "--reference", str(scan / "reference.nii.gz"), *extra]  # fmt: skip
    assert main(args) == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three runs of one noisy scan holding out 2 views: no TV, a TV weight that flattens the volume, and one
    iteration (the start); one run holding out 3 views, one without held-out views, one of another scan."""
    scan, other = _simulate(tmp_path_factory, "scan", 1), _simulate(tmp_path_factory, "other", 2)
    d = tmp_path_factory.mktemp("runs")
    _run(scan, d / "plain", "--holdout-views", "2")
    _run(scan, d / "flat", "--holdout-views", "2", "--tv", "5")
    _run(scan, d / "start", "--holdout-views", "2", "--iterations", "1", "--eval-every", "1")
    _run(scan, d / "three", "--holdout-views", "3")
    _run(scan, d / "none")
    _run(other, d / "other", "--holdout-views", "2")
    return d


def test_select_chooses_the_run_that_predicts_unseen_views_best(runs, tmp_path, capsys):
    """The run that fits the scan ranks first; a volume flattened by TV and the unoptimised start predict the
    held-out views worse, and they are also further from the ground truth (PSNR against the reference, which
    select does not read)."""
    names = [str(runs / n) for n in ("flat", "start", "plain")]
    capsys.readouterr()
    assert main(["select", "--runs", *names, "--json", str(tmp_path / "choice.json")]) == 0
    out = capsys.readouterr().out
    assert f"chosen: {runs / 'plain'} (lowest held-out error" in out
    choice = json.loads((tmp_path / "choice.json").read_text())
    rows = choice["runs"]
    assert choice["chosen"] == rows[0]["run"] == str(runs / "plain")
    errors = [r["held_out_error"] for r in rows]
    assert errors == sorted(errors) and errors[0] < 0.5 * errors[1]
    assert rows[0]["psnr"] > max(r["psnr"] for r in rows[1:])
    for r in rows:  # the error and iteration are the run's own record
        h = json.loads((Path(r["run"]) / "metrics.json").read_text())["holdout"]
        assert (r["held_out_error"], r["iteration"]) == (h["best_error"], h["best_iteration"])
    assert set(rows[0]["settings"]) == {"tv_weight", "iterations"}  # what differs, and nothing else
    assert out.splitlines()[0] == "| run | tv_weight | iterations | held-out error | at iteration | PSNR | SSIM |"


@pytest.mark.parametrize(
    "case,message",
    [
        (("plain", "none"), "without --holdout-views"),
        (("plain", "three"), "held out views"),
        (("plain", "other"), "select compares runs of one scan"),
        (("plain",), "at least two runs"),
        (("plain", "plain"), "named twice"),
        (("plain", "missing"), "no metrics.json"),
        (("plain", "corrupt"), "not readable as JSON"),
    ],
)
def test_select_refuses_runs_it_cannot_compare(runs, tmp_path, capsys, case, message):
    (runs / "corrupt").mkdir(exist_ok=True)
    (runs / "corrupt" / "metrics.json").write_text("{ not json")
    out = tmp_path / "choice.json"
    capsys.readouterr()
    assert main(["select", "--runs", *(str(runs / n) for n in case), "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "medgmae-recon select: error" in err and not out.exists()
