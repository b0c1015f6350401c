"""``reconstruct --init-fit-iterations N``: the zero-shot start's intensities fitted to the FBP volume before the
run (``--init medgmae`` only), recorded with the start's settings and compared by ``--resume``."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from recon_cli_helpers import with_defaults

from medgmae.data.phantom import generate_phantom
from recon.cli import main

from model_helpers import tiny_model_file

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scan_and_model(tmp_path_factory):
    """A 16 x 16 x 12 parallel-beam scan (its FBP written by simulate) and a tiny pre-trained-model file whose
    window is 16 voxels at the scan's 12 mm."""
    d = tmp_path_factory.mktemp("init_fit")
    ph = generate_phantom(3, shape=(16, 16, 12), spacing=(12.0, 12.0, 16.0), noise=False)
    nib.save(nib.Nifti1Image(ph.image.astype(np.float32), ph.affine), str(d / "ct.nii.gz"))
    assert main(["simulate", "--volume", str(d / "ct.nii.gz"), "--geometry", "parallel", "--views", "8",
                 "--out", str(d / "scan"), "--device", "cpu"]) == 0  # fmt: skip
    tiny_model_file(d / "model.pt", num_gaussians=256)
    return d / "scan", d / "model.pt"


def _args(scan: Path, out: Path, *extra) -> list[str]:
    return ["reconstruct", *with_defaults(["--projections", str(scan / "projections.npy"), "--geometry",
            str(scan / "geometry.json"), "--out", str(out), "--no-progress", "--device", "cpu", "--num-gaussians", "100",
            "--checkpoint-every", "0", "--iterations", "1"], extra)]  # fmt: skip


def test_a_negative_count_is_refused_by_the_parser(scan_and_model, tmp_path, capsys):
    scan, model = scan_and_model
    with pytest.raises(SystemExit) as e:
        main(_args(scan, tmp_path / "rec", "--init", "medgmae", "--checkpoint", str(model), "--init-fit-iterations", "-1"))
    assert e.value.code == 2 and "--init-fit-iterations: expected a non-negative integer, got '-1'" in capsys.readouterr().err
    assert not (tmp_path / "rec").exists()


@pytest.mark.parametrize("init", [(), ("--init", "fbp"), ("--init", "random"), ("--preset", "3dgr-ct")])
def test_fit_steps_with_another_start_are_refused_before_any_output(scan_and_model, tmp_path, capsys, init):
    """Only the zero-shot start has its intensities fitted: with another start (the presets' default included) the
    flag would do nothing, so it is refused as --model-spacing is; 0 (the default) is accepted with any start."""
    scan, _ = scan_and_model
    out = tmp_path / "rec"
    assert main(_args(scan, out, *init, "--init-fit-iterations", "5")) == 2
    err = capsys.readouterr().err
    assert "--init-fit-iterations fits the zero-shot Gaussians' intensities: it is only used by --init medgmae (got --init" in err
    assert not out.exists()
    assert main(_args(scan, out, *init, "--init-fit-iterations", "0")) == 0


def test_fit_steps_raise_the_start_against_the_fbp_volume(scan_and_model, tmp_path):
    """With the FBP volume simulate wrote as both the start's source (--fbp) and the --reference, the start's PSNR
    (metrics.json's start, before any optimisation step) measures how closely the initial Gaussians reproduce that
    volume: 20 fit steps bring them closer than the decoder's intensities with one common gain; the setting is
    recorded with the start's."""
    scan, model = scan_and_model
    fbp = str(scan / "fbp.nii.gz")
    start = {}
    for n in ("0", "20"):
        out = tmp_path / f"fit{n}"
        assert main(_args(scan, out, "--init", "medgmae", "--checkpoint", str(model), "--fbp", fbp, "--reference", fbp,
                          "--init-fit-iterations", n)) == 0  # fmt: skip
        metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
        start[n] = metrics["start"]["psnr"]
        assert metrics["init_settings"]["fit_iterations"] == (int(n) or None)
    assert start["20"] > start["0"] + 1.0, start


def test_resume_refuses_another_count_and_resumes_a_state_saved_before_the_setting(scan_and_model, tmp_path, capsys):
    """A resume rebuilds the start: another --init-fit-iterations would rebuild another one, so it is refused,
    naming the flag with both values; the same count resumes; a state saved before the setting existed (no
    fit_iterations recorded) resumes without the flag, as it was made."""
    scan, model = scan_and_model
    out = tmp_path / "rec"
    flags = ("--init", "medgmae", "--checkpoint", str(model))
    assert main(_args(scan, out, *flags, "--iterations", "2", "--init-fit-iterations", "3")) == 0
    state_path = out / "recon_state.pt"
    for other, shown in (("0", "0"), ("4", "4")):  # 0 (off) is recorded as None, shown as the flag's 0
        capsys.readouterr()
        assert main(_args(scan, out, *flags, "--iterations", "4", "--resume", "--init-fit-iterations", other)) == 2
        assert f"--init-fit-iterations: saved 3, now {shown}" in capsys.readouterr().err
    assert main(_args(scan, out, *flags, "--iterations", "4", "--resume", "--init-fit-iterations", "3")) == 0
    assert torch.load(state_path, weights_only=True)["iteration"] == 4
    assert main(_args(scan, out, *flags, "--iterations", "2")) == 0  # a run without fit steps
    old = torch.load(state_path, weights_only=True)
    assert old["run_info"]["settings"]["init"].pop("fit_iterations") is None  # as written before the setting
    torch.save(old, state_path)
    assert main(_args(scan, out, *flags, "--iterations", "4", "--resume")) == 0
    assert main(_args(scan, out, *flags, "--iterations", "6", "--resume", "--init-fit-iterations", "2")) == 2
