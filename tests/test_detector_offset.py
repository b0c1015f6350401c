"""Detector offset (``CTGeometry.det_offset``): projectors against analytic line integrals computed here in float64
from the offset's definition, against a wider centred detector cropped, against ASTRA's own 2D vector geometries;
FBP/FDK of offset scans; JSON; refusals."""

import json
import math

import numpy as np
import pytest
import torch
from chord_helpers import ball_integrals as _ball_integrals, partial_volume_ball, pixel_rays as _pixel_rays

from recon.fbp import fbp
from recon.geometry import CTGeometry
from recon.projectors import AstraProjector, RayMatrixProjector, TorchProjector, resolve_backend
from recon.projectors.matrix_cache import matrix_key

pytestmark = pytest.mark.usefixtures("one_thread")


def _geometry(kind, det_shape, offset, views, shape=(12, 24, 24), spacing=(1.0, 1.0)):
    if kind == "parallel":
        angles = np.linspace(0, math.pi, views, endpoint=False)
        return CTGeometry("parallel", shape, 1.0, det_shape, spacing, angles, det_offset=offset)
    angles = np.linspace(0, 2 * math.pi, views, endpoint=False)
    return CTGeometry("cone", shape, 1.0, det_shape, spacing, angles, 80.0, 120.0, det_offset=offset)


@pytest.mark.parametrize("kind", ["parallel", "cone"])
def test_offset_projection_matches_analytic_ball_integrals(kind):
    """The ray marcher (and its matrix) on a detector offset by (2.3, -1.7) mm give the ball's exact line integrals
    through the shifted pixels (the tolerance of tests/test_recon_projectors.py's centred test: a geometric error of
    even a third of a pixel would give ~10 % in the core); the same integrals with the offset ignored are far off."""
    offset, centre, radius, mu = (2.3, -1.7), (1.3, -2.1, 3.2), 6.0, 0.02  # centre (z, y, x) mm
    spacing = (1.0, 1.0) if kind == "parallel" else (1.5, 1.5)
    g = _geometry(kind, (24 if kind == "parallel" else 30, 48), offset, 6, shape=(20, 24, 24), spacing=spacing)
    vol = partial_volume_ball(g.volume_shape, g.voxel_size, centre, radius, mu)
    so, sd = g.source_origin, g.source_detector
    pix, d = _pixel_rays(kind, g.angles, g.det_shape, g.det_spacing, offset, so, sd)
    exact, dist2 = _ball_integrals(pix, d, centre[::-1], radius, mu)
    for ours in (TorchProjector(g, step=0.25)(vol).numpy(), RayMatrixProjector(g, 0.25, torch.float64)(vol).numpy()):
        inner = dist2 < (0.5 * radius) ** 2
        assert inner.sum() > 50
        rel = (ours[inner] - exact[inner]) / exact[inner]
        assert np.abs(rel).max() < 0.03 and abs(rel.mean()) < 0.01, (np.abs(rel).max(), rel.mean())
        assert np.abs(ours[dist2 > (radius + 2.0) ** 2]).max() < 1e-6 * exact.max()
    centred, _ = _ball_integrals(*_pixel_rays(kind, g.angles, g.det_shape, g.det_spacing, (0, 0), so, sd), centre[::-1], radius, mu)
    assert np.abs((centred - exact)[inner] / exact[inner]).max() > 0.1


def _shifted_pair(kind, k_cols, k_rows):
    """A centred detector with ``k_cols`` / ``k_rows`` extra pixels, and the detector without them offset by half
    that many pixels, so that its pixel ``(r, c)`` is the wide one's ``(r + k_rows, c + k_cols)``."""
    spacing = (1.0, 1.0) if kind == "parallel" else (1.5, 1.5)
    rows, cols = (14, 30) if kind == "parallel" else (20, 30)
    wide = _geometry(kind, (rows + k_rows, cols + k_cols), (0.0, 0.0), 16, spacing=spacing)
    off = (k_cols * spacing[1] / 2, k_rows * spacing[0] / 2)
    return wide, _geometry(kind, (rows, cols), off, 16, spacing=spacing)


@pytest.mark.parametrize("kind", ["parallel", "cone"])
@pytest.mark.parametrize("k_cols, k_rows", [(3, 0), (-4, 0), (2, 2)])
def test_offset_by_whole_pixels_is_a_wider_detector_cropped(kind, k_cols, k_rows):
    """Forward projection on a detector offset by ``k/2`` pixels equals the centred detector with ``|k|`` more
    columns (rows), cropped on one side; so does FBP/FDK of the cropped projections, column by column, where the
    cropped columns held air (the ball sits inside both detectors' common field of view)."""
    wide, off = _shifted_pair(kind, abs(k_cols), k_rows)
    if k_cols < 0:  # extra columns on the other side: offset the other way, crop the other end
        off = _geometry(kind, off.det_shape, (-off.det_offset[0], off.det_offset[1]), 16, spacing=off.det_spacing)
    cols, rows = slice(abs(k_cols), None) if k_cols > 0 else slice(0, off.det_shape[1]), slice(k_rows, None)
    vol = partial_volume_ball(wide.volume_shape, wide.voxel_size, (0.0, 1.5, -2.0), 5.0, 0.02)
    full = TorchProjector(wide)(vol)[:, rows, cols]
    torch.testing.assert_close(TorchProjector(off)(vol), full, rtol=0, atol=1e-12)
    # FBP/FDK: the same data on the same rays reconstruct the same volume where every view's filtered projection
    # lies on both detectors (the wide one's extra columns carry the ramp filter's tails elsewhere): within the
    # cylinder the narrower detector sees about its central ray, less a pixel, at the magnification of its far side
    half = off.det_shape[1] * off.det_spacing[1] / 2 - abs(off.det_offset[0]) - off.det_spacing[1]
    radius = half if kind == "parallel" else half * off.source_origin / off.source_detector * 0.9
    _, y, x = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) - (n - 1) / 2 for n in wide.volume_shape], indexing="ij")
    seen = y**2 + x**2 < radius**2
    assert seen.float().mean() > 0.5
    torch.testing.assert_close(fbp(full, off)[seen], fbp(TorchProjector(wide)(vol), wide)[seen], rtol=0, atol=1e-10)


def test_parker_weights_of_an_offset_detector_are_the_wider_detectors_cropped():
    """Parker's short-scan weights (a 240-degree cone-beam arc) depend on each column's fan angle: on a detector
    offset by 3/2 pixels they are the centred detector's with 3 more columns, cropped, the fan angle's far side
    included (the wide detector's half fan)."""
    from recon.fbp import parker_weights

    wide, off = _shifted_pair("cone", 3, 0)
    angles = list(np.deg2rad(np.arange(0, 240, 4.0)))
    wide, off = (CTGeometry.from_dict({**g.to_dict(), "angles": angles}) for g in (wide, off))
    w_off, w_wide = parker_weights(off), parker_weights(wide)
    assert w_off is not None and float((w_off - 1).abs().max()) > 0.5
    torch.testing.assert_close(w_off, w_wide[:, 3:], rtol=0, atol=1e-12)


@pytest.mark.astra
@pytest.mark.parametrize("kind", ["parallel", "cone"])
def test_astra_2d_vector_geometries_match_the_offset_projection(kind):
    """ASTRA's ``parallel_vec`` / ``fanflat_vec`` geometries, built here with the shifted detector centre, project
    a slice as our projectors do the mid-plane (the backend's own ``strip`` path included for parallel beam):
    relative L2 within the model differences of tests/test_recon_projectors.py (strip 0.6 %, line models a few)."""
    import astra

    offset = (3.1, 0.0)
    g = _geometry(kind, (11, 48), offset, 12, shape=(11, 32, 32), spacing=(1.0, 1.0) if kind == "parallel" else (1.5, 1.5))
    z, y, x = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) - (n - 1) / 2 for n in g.volume_shape], indexing="ij")
    vol = 0.02 * torch.exp(-((y - 3) ** 2 + (x + 4) ** 2) / 30) * (1 + 0 * z) + 0.01 * ((y + 5) ** 2 + (x - 5) ** 2 < 16)
    t = np.asarray(g.angles)
    e, u = np.stack([np.sin(t), -np.cos(t)], 1), np.stack([np.cos(t), np.sin(t)], 1)
    centre = offset[0] * u + (0 if kind == "parallel" else -(g.source_detector - g.source_origin) * e)
    ray_or_src = -e if kind == "parallel" else g.source_origin * e
    vec = np.concatenate([ray_or_src, centre, u * g.det_spacing[1]], 1)
    ageom = astra.create_proj_geom("parallel_vec" if kind == "parallel" else "fanflat_vec", g.det_shape[1], vec)
    vgeom = astra.create_vol_geom(32, 32, -16, 16, -16, 16)
    pid = astra.create_projector("line" if kind == "parallel" else "line_fanflat", ageom, vgeom)
    try:
        sid, sino = astra.create_sino(vol[5].numpy()[::-1].copy(), pid)  # ASTRA's row 0 is the largest y
        astra.data2d.delete(sid)
    finally:
        astra.projector.delete(pid)
    ours = TorchProjector(g, step=0.25)(vol)[:, 5].numpy()
    assert np.linalg.norm(ours - sino) / np.linalg.norm(sino) < 0.03
    if kind == "parallel":  # the backend: its strip model, slice by slice, column offset in its vec geometry
        strip = AstraProjector(g)(vol.float()[None])[0, :, 5].double().numpy()
        assert np.linalg.norm(ours - strip) / np.linalg.norm(strip) < 0.006


def test_row_offsets_leave_astra_2d_for_the_ray_marcher():
    """ASTRA's slice-by-slice path needs the rows level with the slices: a row offset sends 'auto' elsewhere,
    a column offset does not."""
    from recon.projectors.astra_proj import astra_cpu_problem

    g = _geometry("parallel", (12, 30), (0.0, 0.01), 4)  # the detector needs its rows for the volume: a small offset
    assert "offset by v = 0.01 mm" in astra_cpu_problem(g)
    assert resolve_backend(g, "auto", "cpu") == "torch"
    assert astra_cpu_problem(_geometry("parallel", (12, 30), (2.0, 0.0), 4)) is None


@pytest.mark.parametrize("kind", ["parallel", "cone"])
def test_fbp_of_an_offset_scan_recovers_the_ball(kind):
    """FBP/FDK of a ball simulated on a detector offset by 3.7 columns: the core's mean within 2 % of the true
    attenuation and the mass within 3 % (tests/test_recon_fbp_references.py's FDK ball tolerances); the same data
    reconstructed as if the detector were centred smears the ball (its core off by far more)."""
    shape, radius, mu, centre = (24, 32, 32), 7.0, 0.02, (2.0, -3.0, 4.0)
    spacing = 1.0 if kind == "parallel" else 1.5
    offset = (3.7 * spacing, 0.6 * spacing)
    views = 90 if kind == "parallel" else 72
    g = _geometry(kind, (36 if kind == "parallel" else 48, 64), offset, views, shape=shape, spacing=(spacing, spacing))
    z, y, x = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) - (n - 1) / 2 for n in shape], indexing="ij")
    r2 = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2
    vol = (r2 <= radius**2).double() * mu
    proj = TorchProjector(g, step=0.5)(vol)
    rec = fbp(proj, g, "shepp-logan")
    core = r2 <= (radius - 2.5) ** 2
    assert abs(float(rec[core].mean()) - mu) < 0.02 * mu
    assert float((rec[core] - mu).abs().max()) < 0.1 * mu
    assert abs(float(rec.sum()) / float(vol.sum()) - 1) < 0.03
    ignored = fbp(proj, CTGeometry.from_dict({**g.to_dict(), "det_offset": (0.0, 0.0)}), "shepp-logan")
    assert float((ignored[core] - mu).abs().mean()) > 0.2 * mu


def test_json_round_trip_and_a_file_without_the_offset(tmp_path):
    """The offset survives save/load; a geometry.json written before offsets existed (no det_offset) loads as a
    centred detector, and a centred geometry saves without the field (its JSON, and so a run's scan fingerprint and
    the kept matrix's key, as before)."""
    g = _geometry("cone", (24, 48), (1.25, -0.5), 8)
    g.save(tmp_path / "g.json")
    back = CTGeometry.load(tmp_path / "g.json")
    assert back.det_offset == (1.25, -0.5) and back == g
    np.testing.assert_array_equal(back.vectors(), g.vectors())
    old = {"kind": "parallel", "volume_shape": [4, 8, 8], "voxel_size": [1, 1, 1], "det_shape": [4, 12],
           "det_spacing": [1, 1], "angles": [0.0, 1.0], "source_origin": None, "source_detector": None, "affine": None}
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = CTGeometry.load(tmp_path / "old.json")
    assert loaded.det_offset == (0.0, 0.0)
    loaded.save(tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text(encoding="utf-8")) == json.loads(json.dumps(old))
    shifted = CTGeometry.from_dict({**old, "det_offset": [0.5, 0]})
    assert matrix_key(shifted, 0.5, torch.float32) != matrix_key(loaded, 0.5, torch.float32)


@pytest.mark.parametrize(
    "offset, message",
    [
        ((12.0, 0.0), "det_offset u = 12 mm puts the central ray off the detector (half its width is 12 mm): a "
                      "half-fan (offset-detector) scan needs the detector to reach past the central ray"),
        ((-15.0, 0.0), "half-fan"),
        ((0.0, 6.0), "det_offset v = 6 mm puts the central ray off the detector (half its height is 6 mm)"),
        ((float("nan"), 0.0), "det_offset (u, v) must be finite"),
        ((0.0, float("inf")), "det_offset (u, v) must be finite"),
        ((1.0,), "det_offset must be two numbers (u, v) in mm"),
        (("1", 0.0), "det_offset must hold numbers"),
        ((3.0, 0.0), "the detector covers 18.00 mm about the central ray (less twice its offset u = 3 mm) where the "
                     "volume needs 22.00 mm: such a half-fan (offset-detector) scan covers the volume only with views "
                     "all round (360 degrees)"),
    ],
)
def test_offsets_that_cannot_work_are_refused(offset, message):
    """An offset that moves the central ray off the detector, a non-finite or malformed one, one that leaves part of
    the volume's inscribed cylinder unseen on the near side in a scan short of a full turn (a half-fan scan needs
    one; one whose wide side too falls short: tests/test_half_fan.py), are refused by name."""
    with pytest.raises(ValueError) as error:
        CTGeometry("parallel", (12, 22, 22), 1.0, (12, 24), 1.0, [0.0, 1.0], det_offset=offset)
    assert message in str(error.value), str(error.value)


def test_factories_widen_the_default_detector_for_an_offset():
    """The built-in orbits' default detectors still cover the volume on an offset detector."""
    for make in (CTGeometry.parallel, CTGeometry.cone):
        centred, shifted = make((8, 20, 20), 1.0, num_angles=4), make((8, 20, 20), 1.0, num_angles=4, det_offset=(6.0, 2.0))
        assert shifted.det_offset == (6.0, 2.0)
        extra = [(s - c) * p for s, c, p in zip(shifted.det_shape, centred.det_shape, centred.det_spacing)]
        assert extra[0] >= 4.0 - 1e-9 and extra[1] >= 12.0 - 1e-9


def test_gaussian_reconstruction_runs_through_an_offset_projector():
    """A few iterations of the Gaussian reconstruction on an offset cone-beam scan lower its projection loss."""
    from recon.gaussian_recon import GaussianReconConfig, GaussianReconstructor
    from recon.initialisation import fbp_init

    g = _geometry("cone", (14, 30), (2.5, 1.0), 8, shape=(8, 12, 12), spacing=(1.5, 1.5))
    z, y, x = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) - (n - 1) / 2 for n in g.volume_shape], indexing="ij")
    vol = ((z / 3) ** 2 + (y / 4) ** 2 + (x / 3.5) ** 2 < 1).float() * 0.02
    p = TorchProjector(g)
    proj = p(vol)
    rec = GaussianReconstructor(p, proj, fbp_init(fbp(proj, g), 30, seed=0), GaussianReconConfig(iterations=20, eval_every=10, seed=0))
    res = rec.run(progress=False)
    assert res.history[-1]["loss"] < res.history[0]["loss"] and torch.isfinite(res.volume).all()


def test_a_projection_header_origin_is_read_as_the_offset(tmp_path, capsys):
    """A MetaImage stack whose origin is RTK's centred origin ``-(n - 1) / 2 * spacing`` plus (0.6, -0.9) mm, with
    anisotropic pixels (0.8 mm columns, 1.3 mm rows), states the offset (u, v) = (0.6, -0.9): the geometry takes it
    (with a note); a geometry that states another offset is refused, as is a header whose offset puts the central ray
    off the detector. RTK's centred origin keeps the geometry's offset, whatever it is (RTK adds ProjectionOffsetX/Y
    to a centred image)."""
    import SimpleITK as sitk

    from recon.stack_header import check_projection_header, with_header_offset

    g = CTGeometry("parallel", (8, 12, 12), 1.0, (12, 30), (1.3, 0.8), [0.0, 1.0, 2.0])
    (row_mm, col_mm), (rows, cols) = g.det_spacing, g.det_shape
    img = sitk.GetImageFromArray(np.zeros((3, rows, cols), np.float32))
    img.SetSpacing((col_mm, row_mm, 1.0))
    img.SetOrigin((-(cols - 1) / 2 * col_mm + 0.6, -(rows - 1) / 2 * row_mm - 0.9, 0.0))
    sitk.WriteImage(img, str(tmp_path / "p.mha"))
    offset = check_projection_header(tmp_path / "p.mha", g.det_spacing, g.det_shape)
    np.testing.assert_allclose(offset, (0.6, -0.9), rtol=0, atol=1e-9)
    shifted = with_header_offset(g, offset, tmp_path / "p.mha")
    assert shifted.det_offset == offset and "reconstructing with that detector offset" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"but the geometry has det_offset \(0.5, 0.0\) mm: make them agree"):
        with_header_offset(CTGeometry.from_dict({**g.to_dict(), "det_offset": (0.5, 0.0)}), offset, tmp_path / "p.mha")
    img.SetOrigin((-(cols - 1) / 2 * col_mm + 13.0, -(rows - 1) / 2 * row_mm, 0.0))
    sitk.WriteImage(img, str(tmp_path / "far.mha"))
    far = check_projection_header(tmp_path / "far.mha", g.det_spacing, g.det_shape)
    with pytest.raises(ValueError, match="with that detector offset: det_offset u = 13 mm puts the central ray off the detector"):
        with_header_offset(g, far, tmp_path / "far.mha")
    img.SetOrigin((-(cols - 1) / 2 * col_mm, -(rows - 1) / 2 * row_mm, 0.0))  # centred: no offset, geometry unchanged
    sitk.WriteImage(img, str(tmp_path / "centred.mha"))
    centred = check_projection_header(tmp_path / "centred.mha", g.det_spacing, g.det_shape)
    assert centred == (0.0, 0.0) and with_header_offset(g, centred, tmp_path / "centred.mha") is g
    # RTK's centred origin states no offset of its own: geometry.json's (RTK's ProjectionOffsetX/Y) stays
    offset_geometry = CTGeometry.from_dict({**g.to_dict(), "det_offset": (0.5, -0.2)})
    assert with_header_offset(offset_geometry, centred, tmp_path / "centred.mha") is offset_geometry


def test_itk_default_origin_is_refused_with_the_centred_origin_to_write(tmp_path):
    """A stack written with its detector pitch but ITK's default origin (0, 0) (SimpleITK stores it unless told) is
    read as RTK reads it, detector pixel (0, 0) on the central ray; the refusal says so and gives the centred origin
    -(n - 1) / 2 * spacing: (-11.6, -7.15) mm for 30 columns of 0.8 mm and 12 rows of 1.3 mm. Another far offset
    gets no such advice."""
    import SimpleITK as sitk

    from recon.stack_header import check_projection_header, with_header_offset

    g = CTGeometry("parallel", (8, 12, 12), 1.0, (12, 30), (1.3, 0.8), [0.0, 1.0, 2.0])
    img = sitk.GetImageFromArray(np.zeros((3, 12, 30), np.float32))
    img.SetSpacing((0.8, 1.3, 1.0))  # the origin left at ITK's default
    sitk.WriteImage(img, str(tmp_path / "default.mha"))
    offset = check_projection_header(tmp_path / "default.mha", g.det_spacing, g.det_shape)
    advice = "the header's origin is (0, 0), ITK's default"
    for geom in (g, CTGeometry.from_dict({**g.to_dict(), "det_offset": (0.5, 0.0)})):
        with pytest.raises(ValueError) as refused:
            with_header_offset(geom, offset, tmp_path / "default.mha")
        assert advice in str(refused.value) and "(x, y) = (-11.6, -7.15) mm" in str(refused.value), refused.value
    img.SetOrigin((2.0, -7.15, 0.0))  # 13.6 mm off, the rows centred: no default origin
    sitk.WriteImage(img, str(tmp_path / "far.mha"))
    far = check_projection_header(tmp_path / "far.mha", g.det_spacing, g.det_shape)
    with pytest.raises(ValueError, match="puts the central ray off the detector") as refused:
        with_header_offset(g, far, tmp_path / "far.mha")
    assert advice not in str(refused.value)


def test_a_centred_origin_rounded_to_float32_states_no_offset(tmp_path):
    """RTK's centred origin as a float32 header rounds it (-37.5 + 3e-5 mm for 76 columns of 1 mm): within the
    thousandth of a pixel in which a stated offset agrees with the geometry's, it reads as centred, so a per-view
    geometry and one with its own offset keep theirs; a thousandth and a half of a pixel is still an offset."""
    import SimpleITK as sitk

    from recon.stack_header import check_projection_header, with_header_offset

    g = CTGeometry("parallel", (8, 12, 12), 1.0, (10, 76), 1.0, [0.0, 1.0, 2.0], det_offset=[[0.5, 0.0], [0.7, 0.1], [0.6, 0.0]])
    img = sitk.GetImageFromArray(np.zeros((3, 10, 76), np.float32))
    img.SetSpacing((1.0, 1.0, 1.0))
    for shift, centred in ((3e-5, True), (-4e-4, True), (1.5e-3, False)):
        img.SetOrigin((-37.5 + shift, -4.5, 0.0))
        sitk.WriteImage(img, str(tmp_path / "p.mha"))
        offset = check_projection_header(tmp_path / "p.mha", g.det_spacing, g.det_shape)
        assert (offset == (0.0, 0.0)) == centred, offset
        if centred:
            assert with_header_offset(g, offset, tmp_path / "p.mha") is g
            single = CTGeometry.from_dict({**g.to_dict(), "det_offset": (0.5, -0.2)})
            assert with_header_offset(single, offset, tmp_path / "p.mha") is single


def test_the_header_of_a_nifti_stack_named_nii_gz_without_gzip_is_read(tmp_path):
    """A NIfTI projection stack named .nii.gz that is not gzip-compressed (read by the volume reader as the plain
    NIfTI it is) has its pixel spacing checked too: the check crashed with nibabel's "is not a gzip file"."""
    import nibabel as nib

    from recon.stack_header import check_projection_header

    nib.save(nib.Nifti1Image(np.zeros((76, 10, 3), np.float32), np.diag([2.0, 2.0, 1.0, 1.0])), str(tmp_path / "p.nii"))
    (tmp_path / "p.nii").rename(tmp_path / "p.nii.gz")
    with pytest.raises(ValueError, match=r"the header's detector pixel spacing \(col, row\) \(2, 2\) mm differs"):
        check_projection_header(tmp_path / "p.nii.gz", (1.0, 1.0), (10, 76))


def test_simulate_takes_a_detector_offset(tmp_path, capsys):
    """``simulate --geometry cone --det-offset U V`` writes the offset into geometry.json and projects with it;
    with a geometry file, or a non-finite offset, it exits 2 writing nothing (the built-in orbits' default detector
    widens with the offset, so any one it takes keeps the central ray on it)."""
    import nibabel as nib

    from recon.cli import main

    hu = np.full((12, 12, 8), -1000.0, np.float32)
    hu[3:9, 3:9, 2:6] = 40.0
    nib.save(nib.Nifti1Image(hu, np.eye(4)), str(tmp_path / "ct.nii.gz"))
    common = ["simulate", "--volume", str(tmp_path / "ct.nii.gz"), "--device", "cpu"]
    assert main([*common, "--geometry", "cone", "--views", "8", "--det-offset", "2.5", "-1", "--out", str(tmp_path / "s")]) == 0
    g = CTGeometry.load(tmp_path / "s" / "geometry.json")
    assert g.det_offset == (2.5, -1.0)
    centred = CTGeometry.cone((8, 12, 12), 1.0, num_angles=8).det_shape
    notes = [line for line in capsys.readouterr().out.splitlines() if "widened" in line]
    assert notes == [f"note: --det-offset 2.5 -1: the default detector widened from (rows, cols) = {tuple(centred)} to "
                     f"{tuple(g.det_shape)} to still cover the volume"], notes
    proj = np.load(tmp_path / "s" / "projections.npy")
    vol = torch.from_numpy(nib.load(str(tmp_path / "s" / "reference.nii.gz")).get_fdata().transpose(2, 1, 0).copy())
    np.testing.assert_allclose(proj, TorchProjector(g)(vol).numpy(), rtol=1e-4, atol=1e-6)
    capsys.readouterr()
    assert main([*common, "--geometry", str(tmp_path / "s" / "geometry.json"), "--det-offset", "1", "0", "--out", str(tmp_path / "bad")]) == 2
    assert "--det-offset cannot be given with it" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main([*common, "--geometry", "parallel", "--views", "4", "--det-offset", "nan", "0", "--out", str(tmp_path / "bad")])
    assert exit_.value.code == 2 and "argument --det-offset: expected a finite number, got 'nan'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_simulate_refuses_a_detector_offset_beyond_the_detector(tmp_path, capsys):
    """The default parallel-beam detector of a 12 x 12 (y, x) grid of 1 mm voxels, 8 slices deep, is ceil(hypot(12,
    12)) = 17 columns of 1 mm by 8 rows of 1 mm. An offset beyond that width or height (a typo, or micrometres: 1e9
    would have asked for a detector of 2e9 columns and run out of memory) is refused, writing nothing; 16 mm is
    taken, its detector widened by twice the offset."""
    import nibabel as nib

    from recon.cli import main

    hu = np.full((12, 12, 8), -1000.0, np.float32)
    hu[3:9, 3:9, 2:6] = 40.0
    nib.save(nib.Nifti1Image(hu, np.eye(4)), str(tmp_path / "ct.nii.gz"))
    common = ["simulate", "--volume", str(tmp_path / "ct.nii.gz"), "--device", "cpu", "--geometry", "parallel", "--views", "4"]
    for u, v, said in (("18", "0", "u = 18 mm is more than the default detector's width, 17 mm"),
                       ("0", "-9", "v = -9 mm is more than the default detector's height, 8 mm"),
                       ("1e9", "0", "u = 1e+09 mm is more than the default detector's width, 17 mm")):  # fmt: skip
        assert main([*common, "--det-offset", u, v, "--out", str(tmp_path / "bad")]) == 2
        assert said in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()
    assert main([*common, "--det-offset", "16", "0", "--out", str(tmp_path / "s")]) == 0
    assert CTGeometry.load(tmp_path / "s" / "geometry.json").det_shape == (8, 17 + 32)
