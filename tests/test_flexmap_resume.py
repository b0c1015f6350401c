"""A reconstruction on a per-view detector offset (flexmap) scan resumes exactly."""

from __future__ import annotations

import json

import numpy as np
from chord_helpers import ball_projections
from flexmap_helpers import CENTRE, MU, RADIUS, flexmap_scan


def test_reconstruct_stopped_and_resumed_on_a_flexmap_ends_as_the_uninterrupted_run(tmp_path, monkeypatch, capsys):
    """``medgmae-recon reconstruct`` on a 12-view flexmap scan, stopped by Ctrl-C at iteration 3 (its state saved at
    2) and resumed with --resume, writes the volume and history of the run that was not stopped, bit for bit."""
    import nibabel as nib
    from recon_cli_helpers import few_gaussians_args as reconstruct_args

    from recon.cli import main
    from recon.gaussian_recon import GaussianReconstructor
    from recon_cli_helpers import stop_at_iteration

    g = flexmap_scan("cone", views=12)
    np.save(tmp_path / "projections.npy", ball_projections(g, CENTRE, RADIUS, MU, noise=0.01, seed=3).astype(np.float32))
    g.save(tmp_path / "geometry.json")
    flags = ("--iterations", "6", "--checkpoint-every", "2")
    assert main(reconstruct_args(tmp_path, tmp_path / "straight", *flags)) == 0
    step = stop_at_iteration(monkeypatch, 3)
    assert main(reconstruct_args(tmp_path, tmp_path / "stopped", *flags)) == 130
    monkeypatch.setattr(GaussianReconstructor, "step", step)
    capsys.readouterr()
    assert main(reconstruct_args(tmp_path, tmp_path / "stopped", *flags, "--resume")) == 0
    assert "at iteration 2" in capsys.readouterr().out
    volume = {run: nib.load(str(tmp_path / run / "recon.nii.gz")).get_fdata() for run in ("straight", "stopped")}
    np.testing.assert_array_equal(volume["stopped"], volume["straight"])
    history = {run: json.loads((tmp_path / run / "metrics.json").read_text(encoding="utf-8"))["history"]
               for run in ("straight", "stopped")}  # fmt: skip
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(history["stopped"]) == strip(history["straight"]) and history["straight"]
