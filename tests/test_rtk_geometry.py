"""``medgmae-recon geometry``: RTK's circular geometry XML converted to ``geometry.json`` (:mod:`recon.rtk_geometry`).

The reference is RTK itself: ``tests/data/make_rtk_fixture.py`` (run with ``itk-rtk``, which the tests do not need)
wrote three RTK geometries (a cone beam with an offset detector, a half-fan cone beam, a parallel beam; its
flexmap scan is tests/test_flexmap_rtk.py's) and RTK's
exact line integrals of two off-centre ellipsoids of different semi-axes through each. Converted with the command,
the toolkit's geometry must give the same line integrals: exactly (chords computed from :meth:`CTGeometry.vectors`,
the geometry's one definition) and through the toolkit's projector (ellipsoids voxelised at 0.25 mm), landing on the
same pixels. A mirrored mapping (angles reversed, or the object reflected) or a detector offset of the other sign
fails the same comparison by far.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from chord_helpers import relative, vector_integrals as _exact, voxelised as _voxelised
from rtk_helpers import DATA, SHAPE, convert_rtk, rtk_data, rtk_stack, toolkit_ellipsoids, view_centroids  # noqa: F401

from recon.cli import main
from recon.geometry import CTGeometry
from recon.rtk_geometry import read_rtk_geometry

POX_POY = {"offset": (6.0, -3.0), "half_fan": (-24.0, 0.0), "parallel": (3.0, 2.0)}


@pytest.mark.parametrize("scan", ["offset", "half_fan", "parallel"])
def test_a_converted_rtk_scan_projects_as_rtk_does(scan, rtk_data, tmp_path, capsys):
    """The stack's header gives the detector (40 x 32 of 2 mm, RTK's centred origin), the XML the rest: the angles
    are the gantry angles in radians and det_offset is ProjectionOffsetX/Y. The exact line integrals of the
    ellipsoids then match RTK's to 1e-5, the projector's of the voxelised ellipsoids within 5 % with every view's
    centroid within 0.1 pixel; reversed angles, the reflected object and the opposite offset miss by over 25 %."""
    rc, out = convert_rtk(tmp_path, DATA / f"rtk_{scan}.xml", "--projections", str(rtk_stack(tmp_path, rtk_data, scan)))
    assert rc == 0, capsys.readouterr().err
    g = CTGeometry.load(out)
    assert g.kind == ("parallel" if scan == "parallel" else "cone") and g.half_fan == (scan == "half_fan")
    assert (g.det_shape, g.det_spacing, g.det_offset, g.volume_shape) == ((32, 40), (2.0, 2.0), POX_POY[scan], SHAPE)
    np.testing.assert_allclose(g.angles, np.deg2rad(15.0 * np.arange(24)), rtol=0, atol=1e-12)
    ref = rtk_data[f"{scan}_projections"]
    ellipsoids = toolkit_ellipsoids(rtk_data["ellipsoids"])
    assert relative(_exact(g, ellipsoids), ref) < 1e-5
    fine = CTGeometry.from_dict({**g.to_dict(), "volume_shape": [4 * n for n in SHAPE], "voxel_size": 0.25})
    from recon.projectors import TorchProjector

    projected = TorchProjector(fine)(torch.from_numpy(_voxelised(fine, ellipsoids))).numpy()
    assert relative(projected, ref) < 0.05  # the voxels' partial volumes and trilinear sampling
    assert np.abs(view_centroids(projected) - view_centroids(ref)).max() < 0.1
    reversed_angles = CTGeometry.from_dict({**g.to_dict(), "angles": [-a for a in g.angles]})
    other_offset = CTGeometry.from_dict({**g.to_dict(), "det_offset": [-v for v in g.det_offset]})
    for wrong, objects in ((reversed_angles, ellipsoids), (g, toolkit_ellipsoids(rtk_data["ellipsoids"], mirror=True)),
                           (other_offset, ellipsoids)):  # fmt: skip
        assert relative(_exact(wrong, objects), ref) > 0.25


def test_fdk_of_the_converted_half_fan_scan_recovers_the_ellipsoids(rtk_data, tmp_path, capsys):
    """``fbp`` takes the RTK stack (centred origin) with the converted geometry (det_offset from
    ProjectionOffsetX): the header's centred origin keeps the geometry's offset, and the larger ellipsoid comes back
    at its place in the toolkit's frame with its density within 5 % (0.3 % here)."""
    import nibabel as nib

    stack = rtk_stack(tmp_path, rtk_data, "half_fan")
    assert convert_rtk(tmp_path, DATA / "rtk_half_fan.xml", "--projections", str(stack))[0] == 0
    out = tmp_path / "fdk.nii.gz"
    assert main(["fbp", "--projections", str(stack), "--geometry", str(tmp_path / "geometry.json"), "--out", str(out),
                 "--device", "cpu"]) == 0, capsys.readouterr().err  # fmt: skip
    rec = np.asarray(nib.load(str(out)).dataobj).transpose(2, 1, 0)  # (z, y, x)
    g = CTGeometry.load(tmp_path / "geometry.json")
    centre, semi, mu = toolkit_ellipsoids(rtk_data["ellipsoids"])[0]
    core = _voxelised(g, [(centre, semi / 2, 1.0)], sub=1) > 0
    assert abs(rec[core].mean() / mu - 1) < 0.05


def _xml(tmp_path: Path, views: list[dict], top: str = "") -> Path:
    body = "".join("<Projection>" + "".join(f"<{k}>{v}</{k}>" for k, v in view.items()) + "</Projection>" for view in views)
    path = tmp_path / "scan.xml"
    path.write_text(f'<?xml version="1.0"?>\n<!DOCTYPE RTKGEOMETRY>\n<RTKThreeDCircularGeometry version="3">{top}{body}'
                    "</RTKThreeDCircularGeometry>\n", encoding="utf-8")  # fmt: skip
    return path


def test_global_values_and_values_kept_from_earlier_projections(tmp_path):
    """As RTK's reader: a top-level value holds for every projection, a projection's value holds until another is
    given, element names are read without case and ``Angle`` is the older name of ``GantryAngle``."""
    top = "<SourceToDetectorDistance>900</SourceToDetectorDistance><projectionoffsetx>5</projectionoffsetx>"
    views = [{"GantryAngle": 0, "SourceToIsocenterDistance": 600}, {"Angle": 120}, {"GantryAngle": -120}]
    scan = read_rtk_geometry(_xml(tmp_path, views, top))
    assert (scan.sid, scan.sdd, scan.projection_offset) == (600.0, 900.0, (5.0, 0.0))
    np.testing.assert_allclose(scan.gantry_deg, [0.0, 120.0, 240.0])


REFUSALS = {
    "in_plane": ([{"InPlaneAngle": 0.0}, {"InPlaneAngle": 2.0}, {"InPlaneAngle": 0.0}],
                 r"InPlaneAngle is not 0 \(from 0 \(view 0\) to 2 \(view 1\) degrees across the 3 views\)"),
    "detector_distance": ([{}, {"SourceToDetectorDistance": 905}, {}],
                          r"SourceToDetectorDistance varies across the 3 views, from 900 \(view 0\) to 905 \(view 1\) mm"),
    "tilt": ([{"OutOfPlaneAngle": 0.0}, {"OutOfPlaneAngle": 1.5}, {"OutOfPlaneAngle": 0.0}],
             r"OutOfPlaneAngle is not 0 \(from 0 \(view 0\) to 1.5 \(view 1\) degrees across the 3 views\)"),
    "source": ([{"SourceOffsetX": 2.0}, {}, {}], r"SourceOffsetX is not 0"),
    "distance": ([{"SourceToIsocenterDistance": 600}, {"SourceToIsocenterDistance": 610}, {}],
                 r"SourceToIsocenterDistance varies across the 3 views, from 600 \(view 0\) to 610 \(view 1\) mm"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_a_scan_the_geometry_cannot_hold_is_refused(case, tmp_path, capsys):
    """A tilted panel (out of plane or in plane), a source off the central ray, a varying source or detector distance:
    exit 2 naming the file, the field and its range across the views; nothing written (per-view detector offsets, a
    flexmap, are converted: tests/test_flexmap_rtk.py)."""
    changes, message = REFUSALS[case]
    views = [{"GantryAngle": 120.0 * i, "SourceToIsocenterDistance": 600, "SourceToDetectorDistance": 900, **c}
             for i, c in enumerate(changes)]  # fmt: skip
    xml = _xml(tmp_path, views)
    rc, out = convert_rtk(tmp_path, xml, "--det-shape", "32", "40", "--det-spacing", "2")
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert f"RTK geometry {xml}: " in err and re.search(message, err), err


def test_the_detector_must_be_given_and_match_the_stack(rtk_data, tmp_path, capsys):
    """Without --projections the detector flags are needed; a stack with other views than the XML, or a header
    origin shifted beside a ProjectionOffsetX (which fbp would read as the whole offset), is refused."""
    xml = DATA / "rtk_offset.xml"
    assert convert_rtk(tmp_path, xml)[0] == 2 and "give --projections" in capsys.readouterr().err
    import SimpleITK as sitk

    short = tmp_path / "short.mha"
    sitk.WriteImage(sitk.GetImageFromArray(rtk_data["offset_projections"][:20]), str(short))
    assert convert_rtk(tmp_path, xml, "--projections", str(short), "--det-spacing", "2")[0] == 2
    assert "hold 20 views but RTK geometry" in capsys.readouterr().err
    shifted = rtk_stack(tmp_path, rtk_data, "offset", origin_shift=(4.0, 0.0))
    rc, out = convert_rtk(tmp_path, xml, "--projections", str(shifted))
    assert rc == 2 and not out.exists() and "write the stack with RTK's centred origin" in capsys.readouterr().err


def _centred_offset_xml(tmp_path: Path) -> Path:
    """The offset scan's RTK geometry without its ProjectionOffsetX/Y elements."""
    xml = tmp_path / "no_offset.xml"
    xml.write_text("".join(line for line in (DATA / "rtk_offset.xml").read_text().splitlines(True) if "ProjectionOffset" not in line))
    return xml


def test_a_stack_with_itks_default_origin_is_named_in_the_error(rtk_data, tmp_path, capsys):
    """A stack that states its pitch but keeps ITK's default origin 0 shifts the detector by ``(n - 1) / 2 *
    spacing`` from RTK's centred origin: with ProjectionOffsetX/Y of 0 the conversion fails, and the error names the
    header's origin and its shift; beside a ProjectionOffsetX it is refused before the two are added."""
    origin0 = rtk_stack(tmp_path, rtk_data, "offset", origin_shift=tuple(-float(o) for o in rtk_data["offset_origin"]))
    xml = _centred_offset_xml(tmp_path)
    rc, out = convert_rtk(tmp_path, xml, "--projections", str(origin0))
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists(), err
    assert f"with the detector shifted by the header's origin of projections {origin0}, which puts the detector centre " \
        "(u, v) = (39.0, 31.0) mm off RTK's centred origin" in err and "ITK's default" in err, err
    rc, out = convert_rtk(tmp_path, DATA / "rtk_offset.xml", "--projections", str(origin0))
    err = capsys.readouterr().err
    assert rc == 2 and "the header's origin shifts the detector by (39.0, 31.0) mm beside RTK geometry" in err, err



def test_a_stack_whose_origin_carries_the_detector_offset_converts_to_the_same_geometry(rtk_data, tmp_path, capsys):
    """RTK places a pixel at its header coordinates plus ProjectionOffsetX/Y, so the offset scan's projections with
    the offset moved from the XML into the stack's origin (``origin + (6, -3)``, no ProjectionOffset) are the same
    scan: det_offset ``ProjectionOffsetX + h_u`` is again ``(6, -3)`` and the exact line integrals match RTK's."""
    xml = _centred_offset_xml(tmp_path)
    shifted = rtk_stack(tmp_path, rtk_data, "offset", origin_shift=POX_POY["offset"])
    rc, out = convert_rtk(tmp_path, xml, "--projections", str(shifted))
    assert rc == 0, capsys.readouterr().err
    g = CTGeometry.load(out)
    assert g.det_offset == pytest.approx(POX_POY["offset"], abs=1e-9)
    assert relative(_exact(g, toolkit_ellipsoids(rtk_data["ellipsoids"])), rtk_data["offset_projections"]) < 1e-5


def test_a_folder_given_as_the_rtk_geometry_is_named_a_folder(tmp_path):
    """It said "RTK geometry <folder> does not exist (a folder)"."""
    with pytest.raises(ValueError) as e:
        read_rtk_geometry(tmp_path)
    assert str(e.value) == f"RTK geometry {tmp_path} is a folder: give RTK's geometry file (.xml) in it"
    with pytest.raises(ValueError, match=r"geometry\.xml does not exist$"):
        read_rtk_geometry(tmp_path / "geometry.xml")


@pytest.mark.parametrize("turn, views", [(2 * np.pi, 48), (np.pi, 24)])
def test_gantry_angles_written_in_radians_are_refused(tmp_path, turn, views):
    """RTK's GantryAngle is in degrees; written in radians (0 .. 6.15 over 48 views) the scan converted without a
    word into 48 views over 6 degrees, and FDK said only that the arc was short. A real short arc in degrees, and a
    few views of any span, still read."""
    top = "<SourceToIsocenterDistance>600</SourceToIsocenterDistance><SourceToDetectorDistance>900</SourceToDetectorDistance>"
    radians = np.arange(views) * turn / views
    with pytest.raises(ValueError) as e:
        read_rtk_geometry(_xml(tmp_path, [{"GantryAngle": float(a)} for a in radians], top))
    assert (f"scan.xml: GantryAngle runs from 0 to {radians.max():.4g} over {views} views, {turn:.3g} with one step more: "
            f"a {'full' if turn > 4 else 'half'} turn in radians, while GantryAngle is in degrees; give the angles in "
            "degrees (numpy.rad2deg(angles))") in str(e.value)
    scan = read_rtk_geometry(_xml(tmp_path, [{"GantryAngle": float(a)} for a in np.rad2deg(radians)], top))
    np.testing.assert_allclose(np.deg2rad(scan.gantry_deg), radians, atol=1e-9)
    assert read_rtk_geometry(_xml(tmp_path, [{"GantryAngle": a} for a in (0.0, 3.0, 6.0)], top)).num_views == 3
    for n in (views + 1, 361):  # both ends listed: the span itself is the turn (with many views, both within 1 %)
        inclusive = np.linspace(0.0, turn, n)
        with pytest.raises(ValueError, match=rf"over {n} views, a span of {turn:.3g}: a "):
            read_rtk_geometry(_xml(tmp_path, [{"GantryAngle": float(a)} for a in inclusive], top))
    short = np.linspace(0.0, 100.0, views)  # a short arc in degrees: not a turn in radians
    assert read_rtk_geometry(_xml(tmp_path, [{"GantryAngle": float(a)} for a in short], top)).num_views == views


def test_evaluate_says_why_a_reconstruction_centred_on_the_origin_misses_the_reference(tmp_path, capsys):
    """A reconstruction from a geometry.json without an affine (geometry --rtk's) is centred on the origin; evaluate
    against a reference placed elsewhere said only "voxels up to 26.85 mm apart". It now says why and what places
    it; a reconstruction off the reference's grid in another way gets no such hint."""
    from recon_cli_helpers import expect_refusal

    from recon.scan_files import save_nifti

    vol = np.full((6, 8, 10), 0.02, np.float32)  # (z, y, x)
    placed = np.diag([1.0, 1.0, 2.0, 1.0])
    placed[:3, 3] = [-30.0, 12.0, 40.0]
    centred = np.diag([1.0, 1.0, 2.0, 1.0])  # (x, y, z) steps; the grid's centre voxel at the origin, by hand
    centred[:3, 3] = [-(10 - 1) / 2 * 1.0, -(8 - 1) / 2 * 1.0, -(6 - 1) / 2 * 2.0]
    save_nifti(tmp_path / "ref.nii.gz", vol, placed)
    save_nifti(tmp_path / "rec.nii.gz", vol, centred)
    shifted = placed.copy()
    shifted[0, 3] += 5.0
    save_nifti(tmp_path / "shifted.nii.gz", vol, shifted)
    args = ["evaluate", "--reference", str(tmp_path / "ref.nii.gz"), "--recon"]
    err = expect_refusal(capsys, args + [str(tmp_path / "rec.nii.gz")], "is not on the voxel grid of --reference",
                         "--recon is centred on the origin, as a reconstruction from a geometry.json without an affine")
    assert "reconstruct it with --reference (or --fbp)" in err
    err = expect_refusal(capsys, args + [str(tmp_path / "shifted.nii.gz")], "is not on the voxel grid of --reference")
    assert "centred on the origin" not in err
