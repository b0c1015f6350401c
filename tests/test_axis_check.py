"""The rotation axis estimated from the projections (``recon.axis_check``): simulated noisy scans with known detector
offsets, parallel and cone beam; the centre-of-rotation column to ``det_offset`` formula of README's "Detector
offset" paragraph, checked against the column about which two parallel views 180 degrees apart mirror; the warning
``fbp`` prints for a wrong geometry and not for a right one; no estimate (and no warning) where the views do not
pair or show nothing."""

import json
import math

import numpy as np
import pytest
import torch

from recon.axis_check import axis_offset_note, estimate_offset_u
from recon.geometry import CTGeometry
from recon.noise import poisson_line_integrals
from recon.projectors import TorchProjector

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (32, 48, 48)  # (z, y, x), 1 mm voxels


@pytest.fixture(scope="module")
def mu():
    """A 48 x 48 x 32 abdominal phantom as attenuation (1/mm), ``(z, y, x)``."""
    from medgmae.data.phantom import generate_phantom

    hu = generate_phantom(1, shape=SHAPE[::-1], spacing=1.0, noise=False).image.transpose(2, 1, 0)
    return torch.from_numpy(np.clip((hu + 1000.0) / 1000.0 * 0.02, 0.0, None).astype(np.float32))


def _geometry(kind, arc, views, offset_cols):
    """The built-in orbit with the detector offset by ``offset_cols`` columns (its pitch taken from a centred one)."""
    make = CTGeometry.parallel if kind == "parallel" else CTGeometry.cone
    du = make(SHAPE, 1.0, num_angles=views, arc_deg=arc).det_spacing[1]
    return make(SHAPE, 1.0, num_angles=views, arc_deg=arc, det_offset=(offset_cols * du, 0.0))


@pytest.mark.parametrize("kind, arc, views, offset_cols", [
    ("parallel", 180, 90, 0.0), ("parallel", 180, 90, 3.0), ("parallel", 180, 90, -3.0), ("parallel", 180, 90, 1.37),
    ("parallel", 360, 60, -2.6), ("cone", 360, 90, 0.0), ("cone", 360, 90, 3.0), ("cone", 360, 90, -3.0),
    ("cone", 360, 91, 1.37),
])  # fmt: skip
def test_estimate_finds_the_simulated_offset(mu, kind, arc, views, offset_cols):
    """With Poisson noise (1e4 photons per pixel) the estimate is within a quarter column of the simulated offset for
    every seed (measured: within 0.02 column), whole and fractional offsets, both signs, even and odd view counts."""
    g = _geometry(kind, arc, views, offset_cols)
    clean = TorchProjector(g)(mu)
    du = g.det_spacing[1]
    for seed in range(3):
        noisy, _ = poisson_line_integrals(clean, 1e4, torch.Generator().manual_seed(seed))
        est = estimate_offset_u(noisy.numpy(), g)
        assert est is not None
        assert abs(est / du - offset_cols) < 0.25, (seed, est / du, offset_cols)
        assert axis_offset_note(noisy, g) is None  # the right geometry: no warning (a torch tensor is read too)


@pytest.mark.parametrize("kind, arc", [("cone", 360), ("parallel", 180)])
def test_a_raised_open_beam_floor_is_taken_off(mu, kind, arc, capsys):
    """Line integrals raised by log 2 everywhere (raw images converted with a flat twice as bright as their open
    beam): the estimate is within a quarter column of the simulated 3 (-2.4) columns once the floor is given, as
    ``fbp`` / ``reconstruct`` give it (no axis warning with the right geometry); the zero-padded correlation of the
    raised profiles had put the axis within 0.13 column of the detector's centre and warned."""
    from recon.commands import warn_about_scan

    c = math.log(2.0)
    for offset_cols in (3.0, -2.4):
        g = _geometry(kind, arc, 90, offset_cols)
        raised = poisson_line_integrals(TorchProjector(g)(mu), 1e4, torch.Generator().manual_seed(0))[0] + c
        du = g.det_spacing[1]
        assert abs(estimate_offset_u(raised, g, floor=c) / du - offset_cols) < 0.25
        assert axis_offset_note(raised, g, floor=c) is None
        capsys.readouterr()
        warn_about_scan(g, raised, open_beam_floor=c)
        assert "rotation axis" not in capsys.readouterr().out


def _mirror_column(a, b):
    """The column ``c`` about which profile ``b`` is ``a`` mirrored (``b(c + x) = a(c - x)``), by a search on a
    0.01-column grid minimising the squared difference of the two, linearly interpolated."""
    cols = np.arange(len(a), dtype=np.float64)
    best, best_c = np.inf, None
    for c in np.arange(len(a) / 4, 3 * len(a) / 4, 0.01):
        mirrored = np.interp(2 * c - cols, cols, a, left=0.0, right=0.0)
        err = float(np.sum((mirrored - b) ** 2))
        if err < best:
            best, best_c = err, c
    return best_c


def test_centre_of_rotation_column_formula(mu):
    """README's formula ``u = ((cols - 1) / 2 - c) du`` for a centre-of-rotation column ``c`` (0-based): a parallel
    scan simulated with ``u = +2.6`` mm has views 0 and 180 degrees mirrored about column ``(cols - 1) / 2 - u / du``
    (towards column 0), and the estimate gives that ``u`` back."""
    g = _geometry("parallel", 360, 60, 2.6)
    du, cols = g.det_spacing[1], g.det_shape[1]
    proj = TorchProjector(g)(mu).numpy()
    mid = proj.shape[1] // 2
    c = _mirror_column(proj[0, mid - 4 : mid + 4].sum(0), proj[30, mid - 4 : mid + 4].sum(0))  # 180 degrees apart
    assert abs(c - ((cols - 1) / 2 - 2.6 / du)) < 0.05, c
    assert abs(((cols - 1) / 2 - c) * du - 2.6) < 0.05
    assert abs(estimate_offset_u(proj, g) - 2.6) < 0.05


@pytest.mark.parametrize("kind", ["parallel", "cone"])
def test_no_estimate_without_opposite_views_or_structure(mu, kind):
    """A parallel beam short of 180 degrees, a cone beam short of a full turn (here a short scan of 230 degrees):
    no pairs, no estimate, no warning. Projections that are zero, constant, or noise alone: no estimate."""
    arc = 120 if kind == "parallel" else 230
    g = _geometry(kind, arc, 40, 3.0)
    proj = TorchProjector(g)(mu).numpy()
    assert estimate_offset_u(proj, g) is None
    assert axis_offset_note(proj, replace_offset(g, 0.0)) is None
    late = CTGeometry.from_dict({**g.to_dict(), "angles": list(np.mod(np.asarray(g.angles) + 5.0, 2 * math.pi))})
    assert estimate_offset_u(proj, late) is None  # the same arc starting at 5 rad, wrapping past 2 pi
    full = _geometry(kind, 360, 40, 0.0)
    rng = np.random.default_rng(0)
    for flat in (np.zeros(full.proj_shape), np.full(full.proj_shape, 0.7), rng.normal(0, 0.01, full.proj_shape)):
        assert estimate_offset_u(flat, full) is None


def replace_offset(g, u):
    """``g`` with ``det_offset`` ``(u, 0)``."""
    return CTGeometry.from_dict({**g.to_dict(), "det_offset": [u, 0.0]})


def test_fbp_warns_about_a_wrong_detector_offset(tmp_path, capsys):
    """``fbp`` of a cone scan simulated with ``u = 3`` columns prints the axis warning (naming both offsets) with a
    geometry.json that has none, or the opposite sign, and none with the right one; it still writes the volume.
    ``reconstruct`` (given that FBP) warns likewise."""
    import nibabel as nib

    from medgmae.data.phantom import generate_phantom
    from recon.cli import main

    ph = generate_phantom(2, shape=(32, 32, 24), spacing=1.0, noise=False)
    nib.save(nib.Nifti1Image(ph.image.astype(np.float32), ph.affine), str(tmp_path / "ct.nii.gz"))
    du = CTGeometry.cone((24, 32, 32), 1.0, num_angles=60).det_spacing[1]
    assert main(["simulate", "--volume", str(tmp_path / "ct.nii.gz"), "--geometry", "cone", "--views", "60",
                 "--det-offset", str(3 * du), "0", "--photons", "1e4", "--out", str(tmp_path / "s"),
                 "--device", "cpu"]) == 0  # fmt: skip
    assert "rotation axis" not in capsys.readouterr().out
    d = json.loads((tmp_path / "s" / "geometry.json").read_text(encoding="utf-8"))
    for name, offset in (("right", 3 * du), ("none", None), ("flipped", -3 * du)):
        g = {k: v for k, v in d.items() if k != "det_offset"}
        if offset is not None:
            g["det_offset"] = [offset, 0.0]
        (tmp_path / f"{name}.json").write_text(json.dumps(g))
        code = main(["fbp", "--projections", str(tmp_path / "s" / "projections.npy"), "--geometry",
                     str(tmp_path / f"{name}.json"), "--out", str(tmp_path / f"{name}.nii.gz"), "--device", "cpu"])  # fmt: skip
        out = capsys.readouterr().out
        assert code == 0 and (tmp_path / f"{name}.nii.gz").is_file()
        if name == "right":
            assert "rotation axis" not in out
        else:
            cols = d["det_shape"][1]
            given = 0.0 if offset is None else offset  # the column the geometry puts the axis at, by hand
            assert (f"warning: the projections put the rotation axis at column {(cols - 1) / 2 - 3:.2f} (of 0..{cols - 1}), "
                    f"where det_offset u = {3 * du:+.2f} mm puts it; geometry.json's det_offset u = {given:+.2f} mm puts "
                    f"it at column {(cols - 1) / 2 - given / du:.2f}") in out, out  # fmt: skip
    for name in ("right", "none"):  # reconstruct warns too, also when given an FBP (the wrong axis spoils the fit)
        assert main(["reconstruct", "--projections", str(tmp_path / "s" / "projections.npy"), "--geometry",
                     str(tmp_path / f"{name}.json"), "--fbp", str(tmp_path / f"{name}.nii.gz"), "--num-gaussians", "200",
                     "--iterations", "1", "--no-progress", "--device", "cpu", "--out", str(tmp_path / f"rec_{name}")]) == 0  # fmt: skip
        out = capsys.readouterr().out
        assert ("warning: the projections put the rotation axis" in out) == (name == "none"), out
