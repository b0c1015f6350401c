"""reconstruct's check of a --fbp volume stored mirrored (recon/fbp_check.py): an FBP flipped along one or two axes
is refused naming them, the FBP as made passes on noisy scans of random phantoms (some nearly symmetric), and
--no-fbp-check reads the flipped one as given."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from recon.cli import main
from recon.cli_names import CLIError
from recon.fbp import fbp
from recon.fbp_check import check_fbp_orientation, mirror_residuals, relative_residual
from recon.geometry import CTGeometry
from recon.noise import poisson_line_integrals
from recon.projectors import make_projector

from recon_cli_helpers import expect_refusal, few_gaussians_args


def _phantom(shape: tuple[int, int, int], seed: int, symmetric: bool) -> np.ndarray:
    """Attenuation (1/mm) ``(z, y, x)``: a body ellipsoid and 2 to 5 inner ones at random; ``symmetric``: the body
    centred, each inner one copied into all eight octants, and one small ball off the symmetry (nearly symmetric)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    vol = np.zeros(shape)

    def add(centre, radii, value):
        vol[((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((x - centre[2]) / radii[2]) ** 2 < 1] += value

    add(np.zeros(3) if symmetric else rng.uniform(-0.1, 0.1, 3), rng.uniform([0.7, 0.6, 0.6], [0.9, 0.8, 0.8]), 0.019)
    for _ in range(rng.integers(2, 6)):
        centre, radii, value = rng.uniform(-0.45, 0.45, 3), rng.uniform(0.1, 0.25, 3), rng.uniform(-0.008, 0.02)
        signs = np.array(np.meshgrid([1, -1], [1, -1], [1, -1])).reshape(3, -1).T if symmetric else np.ones((1, 3))
        for s in signs:
            add(centre * s, radii, value)
    if symmetric:
        add(rng.uniform(-0.3, 0.3, 3), [0.08] * 3, 0.01)
    return np.clip(vol, 0, None).astype(np.float32)


def _noisy_scan(vol: np.ndarray, kind: str, views: int, photons: float, seed: int):
    """``(projector, noisy projections, their Hann FBP / FDK as a NumPy array)`` of ``vol``."""
    shape = vol.shape
    geom = CTGeometry.parallel(shape, (1.5, 1.0, 1.0), num_angles=views) if kind == "parallel" else \
        CTGeometry.cone(shape, (1.5, 1.0, 1.0), num_angles=views)  # fmt: skip
    projector = make_projector(geom, "auto", "cpu")
    noisy, _ = poisson_line_integrals(projector.forward(torch.from_numpy(vol)), photons, torch.Generator().manual_seed(seed))
    return projector, noisy, fbp(noisy, geom, "hann").numpy()


def test_relative_residual_is_the_least_squares_fit():
    rng = np.random.default_rng(0)
    a, p = rng.normal(size=50) + 3, rng.normal(size=50) + 2
    gain = np.linalg.lstsq(a[:, None], p, rcond=None)[0][0]
    expected = np.linalg.norm(gain * a - p) / np.linalg.norm(p)
    assert relative_residual(torch.tensor(a), torch.tensor(p)) == pytest.approx(expected, rel=1e-9)
    assert relative_residual(torch.tensor(-a), torch.tensor(p)) == pytest.approx(1.0)  # anti-correlated: gain 0
    assert relative_residual(torch.tensor(a), torch.zeros(50)) is None


@pytest.mark.parametrize("seed", range(10))
def test_the_fbp_as_made_passes(seed):
    """Ten noisy scans at 30 to 90 views (parallel and cone) of random phantoms, every third nearly symmetric: the
    FBP as made is never refused, and its best mirror fits the projections worse than it does."""
    rng = np.random.default_rng(100 + seed)
    shape = tuple(int(n) for n in rng.choice([[12, 24, 24], [16, 24, 28]]))
    views, photons = int(rng.choice([30, 60, 90])), float(rng.choice([1e4, 1e5]))
    vol = _phantom(shape, seed, symmetric=seed % 3 == 0)
    projector, noisy, volume = _noisy_scan(vol, "cone" if seed % 2 else "parallel", views, photons, seed)
    check_fbp_orientation(projector, noisy, torch.from_numpy(volume), "fbp.nii.gz")  # no refusal
    found = mirror_residuals(projector, noisy, torch.from_numpy(volume))
    assert min(r for axes, r in found.items() if axes) > found[()]


@pytest.mark.parametrize("kind", ["parallel", "cone"])
@pytest.mark.parametrize(("axes", "named"), [((0,), "along z "), ((1,), "along y "), ((2,), "along x "),
                                             ((1, 2), "along y and x ")])  # fmt: skip
def test_a_flipped_fbp_is_refused_naming_the_axes(kind, axes, named):
    vol = _phantom((16, 24, 28), 5, symmetric=False)  # its body and inserts off centre in every axis
    projector, noisy, volume = _noisy_scan(vol, kind, 30, 3e4, 1)
    flipped = np.ascontiguousarray(np.flip(volume, axes))
    with pytest.raises(CLIError) as e:
        check_fbp_orientation(projector, noisy, torch.from_numpy(flipped), "other.nii.gz")
    msg = str(e.value)
    assert "--fbp other.nii.gz looks mirrored " + named in msg and "--no-fbp-check" in msg, msg
    found = mirror_residuals(projector, noisy, torch.from_numpy(flipped))
    assert f"{100 * found[axes]:.1f} %" in msg and f"{100 * found[()]:.1f} %" in msg  # both residuals


@pytest.fixture(scope="module")
def unplaced_scan(tmp_path_factory):
    """``simulate`` of an off-centre 24 x 24 x 12 phantom (30 parallel views, noisy), its geometry.json without its
    affine, the ``fbp`` of it and that FBP saved with its first file axis (x) stored the other way round, the
    affine adjusted so that the world content is the same: ``(scan folder, geometry, fbp, flipped fbp)``."""
    d = tmp_path_factory.mktemp("fbp_check")
    hu = _phantom((12, 24, 24), 7, symmetric=False) / 0.0192 * 1000 - 1000  # (z, y, x) attenuation to HU
    nib.save(nib.Nifti1Image(hu.transpose(2, 1, 0), np.diag([8.0, 8.0, 12.0, 1.0])), str(d / "ct.nii.gz"))
    assert main(["simulate", "--volume", str(d / "ct.nii.gz"), "--geometry", "parallel", "--views", "30",
                 "--photons", "3e4", "--out", str(d / "scan"), "--device", "cpu"]) == 0  # fmt: skip
    geometry = json.loads((d / "scan" / "geometry.json").read_text())
    del geometry["affine"]
    (d / "geometry.json").write_text(json.dumps(geometry))
    assert main(["fbp", "--projections", str(d / "scan" / "projections.npy"), "--geometry", str(d / "geometry.json"),
                 "--device", "cpu", "--out", str(d / "fbp.nii.gz")]) == 0  # fmt: skip
    image = nib.load(str(d / "fbp.nii.gz"))
    data, affine = np.asarray(image.dataobj), image.affine
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, data.shape[0] - 1  # index i -> n - 1 - i along the file's first axis
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data[::-1]), affine @ flip), str(d / "flipped.nii.gz"))
    return d / "scan", d / "geometry.json", d / "fbp.nii.gz", d / "flipped.nii.gz"


def test_reconstruct_refuses_a_flipped_fbp_and_the_flag_skips_the_check(unplaced_scan, tmp_path, capsys):
    scan, geometry, made, flipped = unplaced_scan
    args = lambda fbp_file, out, *extra: few_gaussians_args(scan, tmp_path / out, "--geometry", str(geometry),  # noqa: E731
                                                            "--fbp", str(fbp_file), "--init", "fbp", *extra)
    expect_refusal(capsys, args(flipped, "refused"), f"--fbp {flipped} looks mirrored along x ", "--no-fbp-check",
                   "medgmae-recon fbp")  # fmt: skip
    assert not (tmp_path / "refused").exists()  # nothing written
    assert main(args(made, "made")) == 0
    assert main(args(flipped, "skipped", "--no-fbp-check")) == 0
    assert (tmp_path / "skipped" / "recon.nii.gz").is_file()
