"""``medgmae-recon geometry`` on RTK's flexmap scan: ProjectionOffsetX/Y that change over the turn become one
``det_offset`` per view.

The reference is RTK: ``tests/data/make_rtk_fixture.py`` wrote ``rtk_flexmap.xml`` (a cone beam whose detector offset
is ``(6 + 3 sin g + cos 2g, -3 + 1.5 cos g)`` mm at gantry angle ``g``) and RTK's exact line integrals of two
ellipsoids through it. Converted, the toolkit's geometry gives the same line integrals (chords from its vectors, and
from the scan's definition with each view's offset), its projector lands them on the same pixels, and FDK of RTK's
stack puts the larger ellipsoid back with its density; the mean offset for all views misses all of these.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from chord_helpers import ellipsoid_integrals, geometry_rays, mean_offset, relative, vector_integrals, voxelised
from rtk_helpers import DATA, SHAPE, convert_rtk, rtk_data, rtk_stack, toolkit_ellipsoids, view_centroids  # noqa: F401

from recon.cli import main
from recon.geometry import CTGeometry

pytestmark = pytest.mark.usefixtures("one_thread")


def _rtk_flexmap() -> np.ndarray:
    """The flexmap the rtk_data was written with: ``(views, 2)`` ProjectionOffsetX/Y in mm."""
    g = np.deg2rad(15.0 * np.arange(24))
    return np.stack([6.0 + 3.0 * np.sin(g) + np.cos(2 * g), -3.0 + 1.5 * np.cos(g)], 1)


def _converted(tmp_path, rtk_data, capsys) -> CTGeometry:
    rc, out = convert_rtk(tmp_path, DATA / "rtk_flexmap.xml", "--projections", str(rtk_stack(tmp_path, rtk_data, "flexmap")))
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "det_offset per view (24 views), u from 2 to 8.12132, v from -4.5 to -1.5 mm" in printed.out, printed.out
    return CTGeometry.load(out)


def test_a_flexmap_scan_projects_as_rtk_does(rtk_data, tmp_path, capsys):
    """det_offset lists each view's ProjectionOffsetX/Y; the exact line integrals match RTK's to 1e-5 (2.6e-8
    measured, from the vectors and from the definition), the projector's of the voxelised ellipsoids within 5 % (1.9 %)
    with every view's centroid within 0.1 pixel (0.03); the mean offset misses RTK's by 45 % and its centroids by 2
    pixels."""
    g = _converted(tmp_path, rtk_data, capsys)
    assert g.kind == "cone" and g.per_view_offset and not g.half_fan
    np.testing.assert_allclose(g.offsets(), _rtk_flexmap(), rtol=0, atol=1e-9)
    ref = rtk_data["flexmap_projections"]
    ellipsoids = toolkit_ellipsoids(rtk_data["ellipsoids"])
    assert relative(vector_integrals(g, ellipsoids), ref) < 1e-5
    assert relative(ellipsoid_integrals(*geometry_rays(g), ellipsoids), ref) < 1e-5
    fine = CTGeometry.from_dict({**g.to_dict(), "volume_shape": [4 * n for n in SHAPE], "voxel_size": 0.25})
    from recon.projectors import TorchProjector

    projected = TorchProjector(fine)(torch.from_numpy(voxelised(fine, ellipsoids))).numpy()
    assert relative(projected, ref) < 0.05
    assert np.abs(view_centroids(projected) - view_centroids(ref)).max() < 0.1
    mean = vector_integrals(mean_offset(g), ellipsoids)
    assert relative(mean, ref) > 0.25 and np.abs(view_centroids(mean) - view_centroids(ref)).max() > 1.0


def test_fdk_of_the_flexmap_stack_recovers_the_ellipsoid(rtk_data, tmp_path, capsys):
    """``fbp`` takes RTK's stack (centred origin) with the per-view geometry: the larger ellipsoid's core within 5 % of
    its density (0.5 % measured); the mean offset's reconstruction is twice as far from the voxelised ellipsoids
    (relative error 0.56 against 0.27); a stack whose header origin states an offset beside the flexmap is refused,
    nothing written, and so is one with ITK's default origin 0 (named as the header's, not as the XML's)."""
    import nibabel as nib

    stack = rtk_stack(tmp_path, rtk_data, "flexmap")
    g = _converted(tmp_path, rtk_data, capsys)
    out = tmp_path / "fdk.nii.gz"
    assert main(["fbp", "--projections", str(stack), "--geometry", str(tmp_path / "geometry.json"), "--out", str(out),
                 "--device", "cpu"]) == 0, capsys.readouterr().err  # fmt: skip
    rec = np.asarray(nib.load(str(out)).dataobj).transpose(2, 1, 0)  # (z, y, x)
    ellipsoids = toolkit_ellipsoids(rtk_data["ellipsoids"])
    centre, semi, mu = ellipsoids[0]
    core = voxelised(g, [(centre, semi / 2, 1.0)], sub=1) > 0
    assert abs(rec[core].mean() / mu - 1) < 0.05
    from recon.fbp import fbp

    ref = voxelised(g, ellipsoids)
    wrong = fbp(torch.from_numpy(rtk_data["flexmap_projections"]), mean_offset(g), "hann").numpy()
    assert relative(wrong, ref) > 1.5 * relative(rec, ref)
    shifted = rtk_stack(tmp_path, rtk_data, "flexmap", origin_shift=(4.0, 0.0))
    (tmp_path / "other").mkdir()
    rc, written = convert_rtk(tmp_path / "other", DATA / "rtk_flexmap.xml", "--projections", str(shifted))
    assert rc == 2 and not written.exists() and "write the stack with RTK's centred origin" in capsys.readouterr().err
    origin0 = rtk_stack(tmp_path, rtk_data, "flexmap", origin_shift=tuple(-float(o) for o in rtk_data["flexmap_origin"]))
    rc, written = convert_rtk(tmp_path / "other", DATA / "rtk_flexmap.xml", "--projections", str(origin0))
    err = capsys.readouterr().err  # ITK's default origin 0: refused as the header's, before the sum leaves the detector
    assert rc == 2 and "the header's origin shifts the detector by (39.0, 31.0) mm" in err and "off the detector" not in err, err


def test_the_geometry_help_says_offsets_may_vary_per_view(capsys):
    """``geometry --help`` says ProjectionOffsetX/Y may vary over the views (one SID and SDD, no tilt)."""
    with pytest.raises(SystemExit) as exit_:
        main(["geometry", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert exit_.value.code == 0 and "one SID and SDD for all views, no tilt" in text, text
    assert "ProjectionOffsetX/Y for all views or varying per view (a flexmap" in text, text
