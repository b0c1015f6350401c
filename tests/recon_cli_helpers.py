"""The scan, phantom, raw-reading and model files of the medgmae-recon CLI tests (module fixtures), and the reconstruct
and fbp calls they share."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

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


def detector_patterns(rows: int, cols: int, photons: float = 20000.0) -> tuple[np.ndarray, np.ndarray]:
    """A detector's open-beam gain pattern (``photons`` times 0.7 .. 1.3) and fixed-pattern dark offset (100 .. 130),
    ``(rows, cols)`` each, float64: the readings of raw-image tests."""
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return photons * (1.0 + 0.3 * np.sin(r / 2.0) * np.cos(c / 3.0)), 100.0 + 5.0 * ((r + 2 * c) % 7)


def with_defaults(defaults: list[str], extra: tuple[str, ...] | list[str]) -> list[str]:
    """``defaults`` (``--flag value`` pairs and bare ``--flags``) less the flags ``extra`` gives, then ``extra``: each
    flag once, as the tools require."""
    given, out, i = {a for a in extra if a.startswith("--")}, [], 0
    while i < len(defaults):
        n = 2 if i + 1 < len(defaults) and not defaults[i + 1].startswith("--") else 1
        out += [] if defaults[i] in given else defaults[i : i + n]
        i += n
    return [*out, *extra]


def few_gaussians_args(scan: Path, out, *extra) -> list[str]:
    """``reconstruct`` of ``scan`` into ``out``: 2 iterations of 100 Gaussians on the CPU, ``extra`` flags replacing those."""
    return ["reconstruct", *with_defaults(["--projections", str(scan / "projections.npy"), "--geometry", str(scan / "geometry.json"),
            "--out", str(out), "--no-progress", "--iterations", "2", "--num-gaussians", "100", "--device", "cpu"], extra)]  # fmt: skip


def expect_refusal(capsys, args: list[str], *messages: str) -> str:
    """``main(args)`` exits 2 with every one of ``messages`` in its error; returns the error."""
    capsys.readouterr()
    assert main(args) == 2, args
    err = capsys.readouterr().err
    assert "error" in err and all(m in err for m in messages), (messages, err)
    return err


def no_leftovers(d: Path) -> list[str]:
    """Hidden staging folders and temporary files anywhere below ``d``."""
    return [str(p) for p in d.rglob(".*")]


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


@pytest.fixture(scope="module")
def raw(small_parallel_scan, tmp_path_factory):
    """The scan's line integrals ``p``, a gain-patterned flat ``F``, a dark ``D`` and readings ``I = D + (F - D)
    exp(-p)`` in float64, saved as ``.npy``: ``(scan folder, files folder, p, F, D)``."""
    scan = small_parallel_scan[0]
    d = tmp_path_factory.mktemp("raw")
    p = np.load(scan / "projections.npy").astype(np.float64)
    flat, dark = detector_patterns(*p.shape[1:])  # a gain pattern 14000 .. 26000, a fixed-pattern offset 100 .. 130
    np.save(d / "counts.npy", dark + (flat - dark) * np.exp(-p))
    np.save(d / "flat.npy", flat)
    np.save(d / "dark.npy", dark)
    return scan, d, p, flat, dark


def fbp_volume(scan: Path, proj: Path, out: Path, *extra) -> np.ndarray:
    """``fbp`` of ``proj`` with ``scan``'s geometry into ``out`` on the CPU (``extra`` flags added), read back in
    float64."""
    assert main(["fbp", "--projections", str(proj), "--geometry", str(scan / "geometry.json"), "--device", "cpu",
                 "--out", str(out), *extra]) == 0  # fmt: skip
    return np.asarray(nib.load(str(out)).dataobj, np.float64)


@pytest.fixture(scope="module")
def scan(small_parallel_scan):
    """A 10-view parallel-beam scan of a 16 x 16 x 12 phantom at 12 x 12 x 16 mm."""
    return small_parallel_scan[0]
