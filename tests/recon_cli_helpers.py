"""The scan, phantom and model files of the medgmae-recon CLI tests (module fixtures), and the reconstruct arguments
they share."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from test_recon_cli_checks import with_defaults

from medgmae.data.phantom import generate_phantom
from recon.cli import main

from model_helpers import tiny_medgmae


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    """A 16 x 16 x 12 phantom in HU at 8 mm (NIfTI with a real affine)."""
    d = tmp_path_factory.mktemp("ct")
    ph = generate_phantom(1, shape=(16, 16, 12), spacing=(12.0, 12.0, 16.0), noise=False)
    path = d / "ct.nii.gz"
    nib.save(nib.Nifti1Image(ph.image.astype(np.float32), ph.affine), str(path))
    return path, ph


@pytest.fixture(scope="module")
def simulated(ct, tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "scan"
    assert main(["simulate", "--volume", str(ct[0]), "--geometry", "parallel", "--views", "10", "--out", str(out), "--device", "cpu"]) == 0
    return out


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    m = tiny_medgmae()
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.save(m.model_checkpoint(), path)
    wrong = path.parent / "encoder.pt"
    torch.save(m.encoder_checkpoint(), wrong)
    return path, wrong


def reconstruct_args(sim, out, *extra):
    return ["reconstruct", *with_defaults(["--projections", str(sim / "projections.npy"), "--geometry", str(sim / "geometry.json"),
            "--out", str(out), "--no-progress", "--iterations", "2", "--device", "cpu"], extra)]  # fmt: skip


def stop_at_iteration(monkeypatch, iteration: int):
    """Make ``GaussianReconstructor.step`` raise ``KeyboardInterrupt`` (a Ctrl-C) when the reconstruction reaches
    ``iteration``; returns the real ``step``, to be patched back for a resume."""
    from recon.gaussian_recon import GaussianReconstructor

    step = GaussianReconstructor.step

    def interrupted_step(self):
        if self.iteration == iteration:
            raise KeyboardInterrupt
        return step(self)

    monkeypatch.setattr(GaussianReconstructor, "step", interrupted_step)
    return step
