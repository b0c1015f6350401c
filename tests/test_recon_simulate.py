"""``medgmae-recon simulate --geometry <geometry.json>``: a scan simulated in a stored geometry (e.g.
``configs/geometry/``), with the volume's own affine, checked against an analytic line integral; grids that do not
fit and flags the file fixes are refused before anything is written."""

import hashlib
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from recon_cli_helpers import with_defaults

from medgmae.data.phantom import generate_phantom
from recon.cli import main
from recon.geometry import CTGeometry
from recon.projectors import make_projector
from recon.scan_files import load_projections, load_volume

pytestmark = pytest.mark.usefixtures("one_thread")

GEOMETRY = Path(__file__).resolve().parents[1] / "configs" / "geometry" / "cone_32cubed_24views.json"
WATER = 0.0192  # 1/mm, the toolkit's attenuation of 0 HU


def _water_cube(path: Path, shape=(32, 32, 32), spacing=3.0, inner=24) -> np.ndarray:
    """A CT in HU: a centred cube of ``inner`` voxels of water in air, on a rotated grid (non-identity affine)."""
    hu = np.full(shape, -1000.0, np.float32)
    lo = [(s - inner) // 2 for s in shape]
    hu[lo[0] : lo[0] + inner, lo[1] : lo[1] + inner, lo[2] : lo[2] + inner] = 0.0
    affine = np.diag([-spacing, spacing, spacing, 1.0])  # a flipped x axis, centred on the origin
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    nib.save(nib.Nifti1Image(hu, affine), str(path))
    return affine


def test_simulate_in_a_stored_geometry(tmp_path, capsys):
    affine = _water_cube(tmp_path / "ct.nii.gz")
    out = tmp_path / "scan"
    assert main(["simulate", "--volume", str(tmp_path / "ct.nii.gz"), "--geometry", str(GEOMETRY), "--out", str(out),
                 "--device", "cpu"]) == 0  # fmt: skip
    stored, written = json.loads(GEOMETRY.read_text(encoding="utf-8")), json.loads((out / "geometry.json").read_text(encoding="utf-8"))
    assert {k: v for k, v in written.items() if k != "affine"} == {k: v for k, v in stored.items() if k != "affine"}
    np.testing.assert_allclose(written["affine"], affine)
    proj = np.load(out / "projections.npy")
    assert proj.shape == (len(stored["angles"]), *stored["det_shape"])
    # the ray to the detector centre crosses the 72 mm water cube through the isocentre in the orbit plane, at the
    # angle theta to a face: 72 / max(|cos|, |sin|) mm (the rays of the two centre columns are tilted by 2.25 / 600
    # rad, a path longer by 7e-6)
    rows, cols = stored["det_shape"]
    centre = proj[:, rows // 2, cols // 2 - 1 : cols // 2 + 1]
    theta = np.asarray(stored["angles"])[:, None]
    path = 72.0 / np.maximum(np.abs(np.cos(theta)), np.abs(np.sin(theta)))
    expected = WATER * np.broadcast_to(path, centre.shape)
    face_on = np.isclose(np.sin(2 * theta[:, 0]), 0.0, atol=1e-9)  # rays along a voxel axis: no partial voxels
    assert face_on.sum() == 4
    np.testing.assert_allclose(centre[face_on], expected[face_on], rtol=2e-3)
    # oblique rays pass the cube's edges, which the voxel interpolation rounds off by about a voxel
    np.testing.assert_allclose(centre, expected, rtol=0.04)
    assert "24 views" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, shape, message",
    [(["--views", "10"], (32, 32, 32), "its angles fix the views, so --views and --arc cannot be given"),
     ([], (32, 32, 30), "is made for (32, 32, 32) voxels of (3.0, 3.0, 3.0) mm (z, y, x), but --volume"),
     ([], None, "missing.json: neither parallel, cone nor an existing geometry.json file"),
     (["--geometry", "cone"], (32, 32, 32), "--geometry cone needs --views")],
)  # fmt: skip
def test_simulate_refuses_a_geometry_that_does_not_fit(tmp_path, capsys, extra, shape, message):
    _water_cube(tmp_path / "ct.nii.gz", shape=shape or (32, 32, 32), inner=20)
    geometry = str(GEOMETRY) if shape else str(tmp_path / "missing.json")
    args = ["simulate", *with_defaults(["--volume", str(tmp_path / "ct.nii.gz"), "--geometry", geometry, "--out",
                                        str(tmp_path / "scan"), "--device", "cpu"], extra)]  # fmt: skip
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "scan").exists()


def test_simulate_says_when_the_orbit_is_not_axial(tmp_path, capsys):
    """The orbit turns about the volume's third array axis: a volume stored with that axis running A-P (a
    permuted axis order) gets a note naming the world direction; an axial one gets none."""
    hu = np.full((12, 10, 8), -1000.0, np.float32)
    hu[3:9, 3:7, 2:6] = 0.0
    for name, affine, said in (("axial.nii.gz", np.diag([2.0, 2.0, 3.0, 1.0]), None),
                               ("coronal.nii.gz", np.array([[2.0, 0, 0, 0], [0, 0, 3.0, 0], [0, 2.0, 0, 0], [0, 0, 0, 1.0]]), "A-P")):  # fmt: skip
        nib.save(nib.Nifti1Image(hu, affine), str(tmp_path / name))
        capsys.readouterr()
        assert main(["simulate", "--volume", str(tmp_path / name), "--geometry", "parallel", "--views", "4", "--out",
                     str(tmp_path / name.split(".")[0]), "--device", "cpu"]) == 0  # fmt: skip
        out = capsys.readouterr().out
        if said is None:
            assert "orbit is not an axial" not in out
        else:
            assert f"third array axis, which runs {said} in world space, so this orbit is not an axial CT's" in out


def _phantom_ct(path: Path) -> None:
    """A 16 x 16 x 12 abdominal phantom in HU at 12 x 12 x 16 mm (line integrals up to about 2.8)."""
    ph = generate_phantom(1, shape=(16, 16, 12), spacing=(12.0, 12.0, 16.0), noise=False)
    nib.save(nib.Nifti1Image(ph.image.astype(np.float32), ph.affine), str(path))


def _simulate(tmp_path, photons: str) -> int:
    return main(["simulate", "--volume", str(tmp_path / "ct.nii.gz"), "--geometry", "parallel", "--views", "10",
                 "--photons", photons, "--out", str(tmp_path / "scan"), "--device", "cpu"])  # fmt: skip


def test_simulate_refuses_photons_too_few_for_the_projection_check(tmp_path, capsys):
    """At 0.001 photons per pixel no reading counts a photon: every line integral would be -log(1 / 0.001), which
    fbp refuses as a file, so simulate refuses it too, in the same words, and writes nothing."""
    _phantom_ct(tmp_path / "ct.nii.gz")
    assert _simulate(tmp_path, "0.001") == 2
    err = capsys.readouterr().err
    assert "--photons 0.001 is too few" in err and "100% of the detector readings counted no photon" in err
    every = np.full((10, 12, 16), -np.log(1 / 0.001), np.float32)  # what it would have written
    np.save(tmp_path / "p.npy", every)
    with pytest.raises(ValueError, match="have no positive value") as refused:
        load_projections(tmp_path / "p.npy")
    assert str(refused.value).split(" have ", 1)[1].split(": line integrals")[0] in err  # the check's own numbers
    assert not (tmp_path / "scan").exists()


def test_simulate_refuses_more_photons_than_it_can_sample(tmp_path, capsys):
    """torch.poisson wraps round to negative counts from 2^63 (about 9.2e18): at 2e19 photons every ray through air
    would read as a reading without photon, a line integral of log(2e19) = 44.4 written as data. Over 1e15 photons
    (Poisson noise under the float32 projections' resolution) simulate refuses, naming the flag, and writes
    nothing; at 1e15 the projections are the noiseless simulation's to within float32 rounding."""
    _phantom_ct(tmp_path / "ct.nii.gz")
    for photons in ("2e19", "1e300"):
        assert _simulate(tmp_path, photons) == 2
        err = capsys.readouterr().err
        assert f"--photons {float(photons):g} is over 1e+15" in err and "too few" not in err, err
        assert not (tmp_path / "scan").exists()
    assert _simulate(tmp_path, "1e15") == 0
    assert main(["simulate", "--volume", str(tmp_path / "ct.nii.gz"), "--geometry", "parallel", "--views", "10",
                 "--out", str(tmp_path / "clean"), "--device", "cpu"]) == 0  # fmt: skip
    clean = np.load(tmp_path / "clean" / "projections.npy")
    assert clean.max() > 1.0  # rays through the phantom, not only air
    np.testing.assert_allclose(np.load(tmp_path / "scan" / "projections.npy"), clean, rtol=0, atol=1e-6)


def test_simulate_warns_when_few_photons_leave_mostly_noise(tmp_path, capsys):
    """At 20 photons about 3 % of the readings through the phantom's densest parts count none (the Poisson
    probability exp(-20 exp(-p))), and the noise is a third of the line integrals: both are warned about with the
    numbers the written files give; at 1e5 photons neither is."""
    _phantom_ct(tmp_path / "ct.nii.gz")
    assert _simulate(tmp_path, "20") == 0
    out = capsys.readouterr().out
    geom = CTGeometry.load(tmp_path / "scan" / "geometry.json")
    mu = torch.from_numpy(load_volume(tmp_path / "scan" / "reference.nii.gz")[0])
    clean = make_projector(geom, "torch", torch.device("cpu")).forward(mu).double()
    noisy = torch.from_numpy(np.load(tmp_path / "scan" / "projections.npy")).double()
    none_expected = float(torch.exp(-20 * torch.exp(-clean)).mean())
    none_said = float(re.search(r"([\d.]+)% of the detector readings counted no photon at --photons 20", out)[1]) / 100
    assert none_expected > 0.01 and none_said == pytest.approx(none_expected, abs=0.01)
    snr = float(clean.square().mean().sqrt() / (noisy - clean).square().mean().sqrt())
    said = float(re.search(r"too noisy to tell detail from noise: .* \(SNR ([\d.]+), below the Rose criterion's 5\)", out)[1])
    assert snr < 5 and said == pytest.approx(snr, rel=0.05)  # two digits printed
    assert _simulate(tmp_path, "1e5") == 0
    out = capsys.readouterr().out
    assert "counted no photon" not in out and "too noisy" not in out


def test_simulate_refuses_a_volume_that_attenuates_nothing(tmp_path, capsys):
    """All air projects to zeros, which fbp refuses as a file: simulate refuses it before its own FBP."""
    nib.save(nib.Nifti1Image(np.full((16, 16, 8), -1000.0, np.float32), np.eye(4)), str(tmp_path / "air.nii.gz"))
    assert main(["simulate", "--volume", str(tmp_path / "air.nii.gz"), "--geometry", "parallel", "--views", "4",
                 "--out", str(tmp_path / "scan"), "--device", "cpu"]) == 2  # fmt: skip
    assert "have no positive value (0% negative, the rest 0; max 0)" in capsys.readouterr().err
    assert not (tmp_path / "scan").exists()
    # with --photons too: its noisy zeros would pass the check, and more photons cannot help
    assert main(["simulate", "--volume", str(tmp_path / "air.nii.gz"), "--geometry", "parallel", "--views", "4",
                 "--photons", "1e5", "--out", str(tmp_path / "scan"), "--device", "cpu"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "the volume attenuates nothing" in err and "raise --photons" not in err
    assert not (tmp_path / "scan").exists()


def test_simulate_refuses_views_beyond_any_scanner_and_warns_about_one_view(tmp_path, capsys):
    """``--views 1e8`` built a list of 10^8 angles before any check and ended in a MemoryError traceback (or the
    out-of-memory killer): over 100,000 views simulate refuses, naming the flag, and writes nothing. One view is
    taken with a warning: it holds no depth, so its FBP smears the volume along the rays; two are taken without."""
    _phantom_ct(tmp_path / "ct.nii.gz")
    args = ["simulate", "--volume", str(tmp_path / "ct.nii.gz"), "--geometry", "parallel", "--device", "cpu"]
    assert main([*args, "--views", "1e8", "--out", str(tmp_path / "many")]) == 2
    err = capsys.readouterr().err
    assert "--views 100000000: more than 100,000 projection angles" in err and not (tmp_path / "many").exists()
    assert main([*args, "--views", "1", "--out", str(tmp_path / "one")]) == 0
    assert "warning: --views 1: one view holds no depth" in capsys.readouterr().out
    geom = CTGeometry.load(tmp_path / "one" / "geometry.json")
    fbp = np.asarray(nib.load(tmp_path / "one" / "fbp.nii.gz").dataobj)
    assert geom.num_views == 1 and fbp.std() > 0
    assert main([*args, "--views", "2", "--out", str(tmp_path / "two")]) == 0
    assert "one view holds no depth" not in capsys.readouterr().out


def test_simulate_json_records_how_the_scan_was_made_and_reconstruct_the_software(tmp_path):
    """simulate.json names every argument (the seed of the noise and the photons among them), the volume read with
    the SHA-256 of its bytes (computed here with hashlib) and the software; reconstruct's metrics.json the software
    and the content of the --fbp its start was built from."""
    _water_cube(tmp_path / "ct.nii.gz", shape=(12, 12, 12), spacing=4.0, inner=8)
    out = tmp_path / "scan"
    assert main(["simulate", "--volume", str(tmp_path / "ct.nii.gz"), "--geometry", "parallel", "--views", "6",
                 "--photons", "1e5", "--seed", "7", "--out", str(out), "--device", "cpu"]) == 0  # fmt: skip
    record = json.loads((out / "simulate.json").read_text(encoding="utf-8"))
    args = record["arguments"]
    assert (args["seed"], args["photons"], args["views"], args["geometry"], args["filter"]) == (7, 1e5, 6, "parallel", "hann")
    assert record["volume"] == {"path": str((tmp_path / "ct.nii.gz").resolve()),
                                "sha256": hashlib.sha256((tmp_path / "ct.nii.gz").read_bytes()).hexdigest()}  # fmt: skip
    assert record["software"]["packages"]["torch"] == torch.__version__
    assert not list(out.glob(".*"))  # written through the scan's staging folder, as its other files
    assert main(["reconstruct", "--projections", str(out / "projections.npy"), "--geometry", str(out / "geometry.json"),
                 "--fbp", str(out / "fbp.nii.gz"), "--out", str(tmp_path / "rec"), "--no-progress", "--iterations", "1",
                 "--num-gaussians", "50", "--device", "cpu"]) == 0  # fmt: skip
    metrics = json.loads((tmp_path / "rec" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["software"]["packages"]["torch"] == torch.__version__
    assert metrics["inputs"] == {"--fbp": {"path": str((out / "fbp.nii.gz").resolve()),  # what the start was built from
                                           "sha256": hashlib.sha256((out / "fbp.nii.gz").read_bytes()).hexdigest()}}


def test_a_dicom_folder_is_fingerprinted_by_its_files(tmp_path):
    """A folder read as a volume (a DICOM series) is named by the SHA-256 of its files' names and their SHA-256s, one
    line each, sorted by name: the files of its top level, which the reader reads (not a subfolder's)."""
    from medgmae.data.fingerprint import path_fingerprint

    (tmp_path / "series" / "sub").mkdir(parents=True)
    (tmp_path / "series" / "b.dcm").write_bytes(b"second")
    (tmp_path / "series" / "a.dcm").write_bytes(b"first")
    (tmp_path / "series" / "sub" / "c.dcm").write_bytes(b"elsewhere")
    lines = "".join(f"{name}\t{hashlib.sha256(data).hexdigest()}\n" for name, data in (("a.dcm", b"first"), ("b.dcm", b"second")))
    assert path_fingerprint(tmp_path / "series") == {"path": str((tmp_path / "series").resolve()),
                                                     "sha256": hashlib.sha256(lines.encode()).hexdigest()}  # fmt: skip
