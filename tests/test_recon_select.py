"""``medgmae-recon select``: ranking reconstructions of one scan by held-out error, and every refusal (exit 2)."""

import json
import platform
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from recon_cli_helpers import with_defaults

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
    args = ["reconstruct", *with_defaults(["--projections", str(scan / "projections.npy"), "--geometry",
            str(scan / "geometry.json"), "--out", str(out), "--no-progress", "--device", "cpu", "--iterations", "40",
            "--eval-every", "10", "--num-gaussians", "300", "--reference", str(scan / "reference.nii.gz")], extra)]  # fmt: skip
    assert main(args) == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three runs of one noisy scan holding out 2 views: no TV, a TV weight that flattens the volume, and one
    iteration (the start); one run holding out 3 views, one without held-out views, one of another scan."""
    scan, other = _simulate(tmp_path_factory, "scan", 1), _simulate(tmp_path_factory, "other", 2)
    d = tmp_path_factory.mktemp("runs")
    _run(scan, d / "plain", "--holdout-views", "2")
    _run(scan, d / "refit", "--holdout-views", "2", "--refit")
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
    choice = json.loads((tmp_path / "choice.json").read_text(encoding="utf-8"))
    rows = choice["runs"]
    assert choice["chosen"] == rows[0]["run"] == str(runs / "plain")
    errors = [r["held_out_error"] for r in rows]
    assert errors == sorted(errors) and errors[0] < 0.5 * errors[1]
    assert rows[0]["psnr"] > max(r["psnr"] for r in rows[1:])
    for r in rows:  # the error and iteration are the run's own record
        h = json.loads((Path(r["run"]) / "metrics.json").read_text(encoding="utf-8"))["holdout"]
        assert (r["held_out_error"], r["iteration"]) == (h["best_error"], h["best_iteration"])
    assert set(rows[0]["settings"]) == {"tv_weight", "iterations"}  # what differs, and nothing else
    assert out.splitlines()[0] == "| run | tv_weight | iterations | held-out error | at iteration | PSNR | SSIM |"
    # what ranked them, as every results record says: the versions the libraries give themselves, no GPU (select
    # runs on none)
    assert choice["software"]["packages"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert choice["software"]["python"] == platform.python_version() and "gpu" not in choice["software"]


def test_select_prefers_the_refitted_run_of_a_tie_and_says_so(runs, capsys):
    """A run and its --refit twin share the held-out error (the same fit up to the chosen iteration): the one
    refitted to every view is chosen, whatever the order given, and the tie is named."""
    for order in (("plain", "refit"), ("refit", "plain")):
        capsys.readouterr()
        assert main(["select", "--runs", *(str(runs / n) for n in order)]) == 0
        out = capsys.readouterr().out
        assert f"chosen: {runs / 'refit'} (lowest held-out error" in out
        assert f"note: tied with {runs / 'plain'} (equal held-out errors" in out


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


def test_select_compares_scans_by_their_fingerprint(tmp_path, tmp_path_factory, monkeypatch, capsys):
    """Two scans reached by the same relative path from different folders are different scans; a copy of a scan at
    another path is the same scan; runs without a recorded fingerprint fall back to the absolute paths."""
    first, second = _simulate(tmp_path_factory, "first", 1), _simulate(tmp_path_factory, "second", 2)
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("projections.npy", "geometry.json"):
        (copy / name).write_bytes((first / name).read_bytes())
    quick = ["--holdout-views", "2", "--iterations", "4", "--eval-every", "2", "--num-gaussians", "100"]
    runs = tmp_path / "runs"
    for scan, run in ((first, "a"), (second, "b")):
        monkeypatch.chdir(scan.parent)  # the same relative path, "scan/...", to two scans
        assert main(["reconstruct", "--projections", "scan/projections.npy", "--geometry", "scan/geometry.json",
                     "--out", str(runs / run), "--no-progress", "--device", "cpu", *quick]) == 0  # fmt: skip
    assert main(["reconstruct", "--projections", str(copy / "projections.npy"), "--geometry", str(copy / "geometry.json"),
                 "--out", str(runs / "c"), "--no-progress", "--device", "cpu", *quick, "--tv", "0.01"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["select", "--runs", str(runs / "a"), str(runs / "b")]) == 2
    err = capsys.readouterr().err
    assert "select compares runs of one scan" in err and str(first / "projections.npy") in err and str(second / "projections.npy") in err
    assert main(["select", "--runs", str(runs / "a"), str(runs / "c")]) == 0  # a copy of the same scan
    assert "chosen:" in capsys.readouterr().out
    for run in ("a", "c"):  # as older versions wrote them: no fingerprint, relative paths from another folder
        old = json.loads((runs / run / "metrics.json").read_text(encoding="utf-8"))
        del old["scan"]
        (runs / f"old_{run}").mkdir()
        (runs / f"old_{run}" / "metrics.json").write_text(json.dumps(old))
    monkeypatch.chdir(first.parent)
    assert main(["select", "--runs", str(runs / "old_a"), str(runs / "a")]) == 0  # resolved from here: the same files
    assert main(["select", "--runs", str(runs / "old_a"), str(runs / "old_c")]) == 2  # other files, nothing else to tell
    assert "select compares runs of one scan" in capsys.readouterr().err


def test_select_says_when_the_runner_up_is_within_the_margin(runs, tmp_path, capsys):
    """Held-out errors 0.011093 and 0.011140 (0.4 % apart, the acceptance report's runs): the lowest is named and a
    note says the difference is within 35 %; with the runner-up at twice the error (and a third run 30 % above) only
    the runs within the margin are named, and the --json summary lists them."""
    def fake(name: str, error: float) -> str:
        m = json.loads((runs / "plain" / "metrics.json").read_text(encoding="utf-8"))
        m["holdout"]["best_error"] = error
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(m))
        return str(tmp_path / name)

    a, b, c, d = fake("a", 0.011140), fake("b", 0.011093), fake("c", 0.022186), fake("d", 0.0144209)
    capsys.readouterr()
    assert main(["select", "--runs", a, b]) == 0
    out = capsys.readouterr().out
    assert f"chosen: {b} (lowest held-out error, 0.011093" in out
    assert f"note: within 35 % of the lowest held-out error: {a} (0.01114, 0.4 % higher); differences this small" in out
    assert main(["select", "--runs", c, b, d, "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert f"note: within 35 % of the lowest held-out error: {d} (0.014421, 30.0 % higher);" in out and f"{c} (" not in out
    summary = json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))
    assert (summary["chosen"], summary["within_margin"], summary["margin"]) == (b, [d], 0.35)
    assert main(["select", "--runs", c, b]) == 0 and "within 35 %" not in capsys.readouterr().out


def test_select_of_one_raw_file_converted_differently_names_each_conversion():
    """Runs of the same raw file with another --flat (different line-integral hashes) are refused saying both name
    that file and which --flat / --dark / --i0 each used."""
    from recon.cli import CLIError
    from recon.select_command import rank_runs

    def metrics(flat, i0, sha):
        scan = {"projections": "/data/counts.npy", "geometry": "/data/geometry.json", "projections_shape": [10, 12, 16],
                "projections_sha256": sha, "geometry_sha256": "g" * 64, "flat": flat, "dark": "/data/dark.npy" if flat else None,
                "i0": i0}  # fmt: skip
        return {"settings": {}, "arguments": {}, "scan": scan, "holdout": {"best_error": 0.1, "views": [3, 7]}}

    runs = {"a": metrics("/data/flat.npy", None, "a" * 64), "b": metrics(None, 20000.0, "b" * 64)}
    with pytest.raises(CLIError) as e:
        rank_runs(runs)
    assert "b and a both name the raw file /data/counts.npy" in str(e.value)
    assert "b converted with --i0 20000.0" in str(e.value) and "a converted with --flat /data/flat.npy, --dark /data/dark.npy" in str(e.value)
